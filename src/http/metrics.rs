//! `GET /metrics`: Prometheus text format, and the middleware that measures every request.
//!
//! Counters and histograms are recorded where things happen (engine, executors, Kommo client,
//! this middleware) through the `metrics` facade; gauges that describe the current state
//! (active actors, outbox depth, running effects) are read when Prometheus scrapes.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics
///
/// The Prometheus text format: HTTP requests by route and status, actors, events, effects,
/// replies, outbox, store and Kommo calls.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "probes",
    responses(
        (status = 200, description = "Prometheus text format",
         content_type = "text/plain; version=0.0.4", body = String,
         example = "# HELP conversa_http_requests_total HTTP requests answered, by route template, method and status.\n# TYPE conversa_http_requests_total counter\nconversa_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 12\n"),
        (status = 503, description = "The metrics recorder is not installed", body = crate::error::ApiError,
         example = json!({"error": "internal", "message": "internal error"})),
    ),
)]
async fn metrics(State(app): State<AppState>) -> Response {
    let Some(handle) = &app.0.metrics else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response();
    };
    let stats = app.engine().stats();
    metrics::gauge!("conversa_actors_active").set(stats.active_actors as f64);
    metrics::gauge!("conversa_effects_running").set(stats.effects_running as f64);
    if let Ok(pending) = app.engine().store().pending_outbox_count().await {
        metrics::gauge!("conversa_outbox_pending_contacts").set(pending as f64);
    }
    if let Some(age) = oldest_waiting(&app).await {
        metrics::gauge!("conversa_outbox_oldest_seconds").set(age);
    }
    if let Some(kommo) = app.kommo() {
        let reauthorize = matches!(
            kommo.tokens().state(),
            crate::kommo::oauth::TokenState::ReauthorizeNeeded { .. }
        );
        metrics::gauge!("conversa_kommo_reauthorize_needed").set(f64::from(u8::from(reauthorize)));
        metrics::gauge!("conversa_kommo_blocked").set(f64::from(u8::from(kommo.circuit_open())));
    }
    let go_live = app
        .0
        .go_live
        .current(app.kommo().cloned(), &app.0.http)
        .await;
    if go_live.checked_online_at.is_some() {
        metrics::gauge!("conversa_customers_answered")
            .set(f64::from(u8::from(go_live.customers_answered)));
    }
    if let Ok(kept) = app.0.dead_letters.list().await {
        metrics::gauge!("conversa_dead_letters").set(kept.len() as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

/// How many contacts with work waiting are looked at for the age of the oldest effect (the
/// store's outbox index is a set, not an order: a sample, read at each scrape).
const OUTBOX_SAMPLE: usize = 50;

/// Seconds the oldest effect has waited in the outbox, among up to [`OUTBOX_SAMPLE`] contacts
/// with work waiting (0 when none waits); `None` when the store cannot say.
async fn oldest_waiting(app: &AppState) -> Option<f64> {
    let engine = app.engine();
    let keys = engine.store().pending_outbox(OUTBOX_SAMPLE).await.ok()?;
    let now = conversa_actors::clock::now_millis();
    let mut oldest = now;
    for key in keys {
        if let Ok(Some((c, _))) = engine.conversation(&key).await {
            for e in c.outbox().entries() {
                oldest = oldest.min(e.created_at);
            }
        }
    }
    Some(now.saturating_sub(oldest) as f64 / 1000.0)
}

/// Counts requests and measures their latency per route template and status.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // A client can send any method name: only the standard ones become label values.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let labels = [
        ("route", route),
        ("method", method.to_owned()),
        ("status", status),
    ];
    metrics::counter!("conversa_http_requests_total", &labels).increment(1);
    metrics::histogram!("conversa_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
