//! The one error type of the HTTP API: every failure answers JSON
//! `{"error": "<code>", "message": "...", "field": "<bad key>"?}` with a fitting status.
//!
//! The same shape is the `ApiError` schema of the OpenAPI document (`/openapi.json`).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conversa_actors::EngineError;
use serde::Serialize;
use utoipa::ToSchema;

/// Every error of the API: a stable machine-readable `error` code, a human `message`, and, when
/// one key of the request is to blame, that key in `field`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"error": "bad_request", "message": "unknown command \"stop\"; expected one of [\"pause\", \"resume\", \"status\"]", "field": "command"}))]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// The error code, e.g. `bad_request`, `unauthorized`, `not_found`, `store_unavailable`.
    #[schema(value_type = String, example = "bad_request")]
    pub error: &'static str,
    /// What went wrong, for a human.
    pub message: String,
    /// The request key (JSON path or form key) to blame, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
    /// For a conversation held by another seller: who holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::openapi::schemas::SellerRef>, nullable = false)]
    pub holder: Option<conversa_actors::SellerRef>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            field: None,
            holder: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A 400 naming the offending field.
    pub fn bad_field(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.to_owned()),
            ..Self::bad_request(message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) | EngineError::Contended => {
                Self::unavailable(e.to_string())
            }
            EngineError::ActorFailed(_) | EngineError::Corrupt(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

impl From<conversa_actors::store::StoreError> for ApiError {
    fn from(e: conversa_actors::store::StoreError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let status = match r {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        let code = match status {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "bad_request",
        };
        let text = r.body_text();
        Self {
            field: bad_key(&text),
            ..Self::new(status, code, text)
        }
    }
}

/// The JSON path serde names in "...target type: <path>: <problem>", when there is one.
fn bad_key(text: &str) -> Option<String> {
    let rest = text.split_once("target type: ")?.1;
    let (path, _) = rest.split_once(": ")?;
    let plausible = !path.is_empty() && !path.contains(' ');
    plausible.then(|| path.to_owned())
}
