//! The middleware every request goes through, outermost first: a request id (taken from
//! `x-request-id` or made, echoed in the response and carried by every log line of the
//! request), tracing, JSON error bodies for errors produced outside the handlers, a timeout, a
//! body limit, and the API key for operator endpoints.
//!
//! Authentication is applied to the whole router with a short list of public paths, so a new
//! route is protected unless it is deliberately listed here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::{Span, error, info_span, warn};

use crate::error::ApiError;
use crate::http::auth::require_bearer;
use crate::state::AppState;

/// Paths that never need the API key: probes, docs, and endpoints with their own secret
/// (the Kommo webhook, n8n's callback, the OAuth redirect).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/version" | "/openapi.json" | "/oauth/callback" | "/send-response"
    ) || path == "/docs"
        || path.starts_with("/docs/")
        || path == "/webhooks/kommo"
        || path.starts_with("/webhooks/kommo/")
}

pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

pub fn wrap(router: Router<AppState>, state: AppState, limits: Limits) -> Router {
    let request_id = header::HeaderName::from_static("x-request-id");
    // `Router::layer` wraps outside what is already there: innermost first.
    // Credentials are checked before the body is read or its size judged: a caller without
    // them learns nothing but 401. So the body limit applies when a handler reads the body
    // (axum's `DefaultBodyLimit`, after the extractors that check the webhook secret and the
    // reply proof), not as a layer in front of everything.
    router
        .route_layer(middleware::from_fn(crate::http::metrics::track))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::from_fn(bounded_head))
        .layer(middleware::map_response(json_errors))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<Body>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // The route template, never the raw path or query: they may carry secrets
                    // (`/webhooks/kommo/{secret}`, `?token=`, `?reply_token=`).
                    let route = req
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("{unmatched}", MatchedPath::as_str);
                    info_span!("http", method = %req.method(), route = %route, request_id = %id)
                })
                .on_response(log_answer)
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(request_id, RequestIds::new()))
        .with_state(state)
}

/// One line per refused or failed request: a client's mistake (4xx) or a store outage (503) is
/// a WARN, something broken here (other 5xx) an ERROR; successes stay quiet.
fn log_answer(res: &Response, latency: Duration, _span: &Span) {
    let status = res.status();
    let ms = latency.as_millis() as u64;
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        error!(status = status.as_u16(), latency_ms = ms, "request failed");
    } else if status.is_client_error() || status.is_server_error() {
        warn!(status = status.as_u16(), latency_ms = ms, "request refused");
    }
}

/// Request ids for requests that come without one: a random per-process prefix and a counter
/// (`5f0c2a91d3e47b10-1a2b`). Unique across restarts and nodes like a UUID, without asking the
/// kernel for randomness on every request (a `getrandom` syscall per request showed in the
/// ingest profile).
#[derive(Clone)]
struct RequestIds {
    prefix: u64,
    next: Arc<AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        Self {
            prefix: crate::node::nonce(),
            next: Arc::new(AtomicU64::new(1)),
        }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}-{n:x}", self.prefix);
        header::HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

async fn require_api_key(
    State(app): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !is_public(req.uri().path()) {
        require_bearer(app.0.api_key.as_deref(), req.headers())?;
    }
    Ok(next.run(req).await)
}

/// The longest request target (path and query) accepted; longer: 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most bytes of request headers accepted; more: 431. (A request head beyond 64 KiB
/// never gets here: the server answers it 431 itself, with no body, and closes.)
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Refuses an over-long request target (414) or header block (431) with our JSON error.
async fn bounded_head(req: Request, next: Next) -> Response {
    let uri = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri} bytes: at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are {headers} bytes: at most {MAX_HEADER_BYTES}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Errors made by layers (413, 408, 405...) come with a plain or empty body: give them ours.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body too large"),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this path"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        s if s.is_server_error() => ("internal", "internal error"),
        _ => ("bad_request", "bad request"),
    };
    let mut fresh = ApiError::new(status, code, message).into_response();
    if let Some(id) = response.headers().get("x-request-id") {
        fresh.headers_mut().insert("x-request-id", id.clone());
    }
    fresh
}
