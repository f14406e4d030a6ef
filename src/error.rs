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

use crate::flows::FlowError;
use crate::sellers::DirectoryError;

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
    #[schema(value_type = Option<conversa_actors::SellerRef>, nullable = false)]
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

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        let message = e.to_string();
        match e {
            FlowError::Invalid { field, code, .. } => ApiError {
                field: Some(field),
                ..Self::new(StatusCode::BAD_REQUEST, code, message)
            },
            FlowError::Forbidden { code, .. } => Self::new(StatusCode::FORBIDDEN, code, message),
            FlowError::NotFound(_) => Self::not_found(message),
            FlowError::Conflict { code, holder, .. } => ApiError {
                holder,
                ..Self::new(StatusCode::CONFLICT, code, message)
            },
            FlowError::Unprocessable { field, code, .. } => ApiError {
                field: field.map(str::to_owned),
                ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            },
            FlowError::KommoUnavailable(detail) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "kommo_unavailable", detail)
            }
            FlowError::Engine(e) => e.into(),
            FlowError::Directory(e) => e.into(),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        let message = e.to_string();
        match e {
            DirectoryError::Invalid { field, message } => ApiError::bad_field(field, message),
            DirectoryError::Duplicate { field, .. } => ApiError {
                field: Some(field.to_owned()),
                ..ApiError::new(StatusCode::CONFLICT, "conflict", message)
            },
            DirectoryError::NotFound(_) => ApiError::not_found(message),
            DirectoryError::StoreUnavailable(_) => ApiError::unavailable(message),
            DirectoryError::Corrupt(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            DirectoryError::NotConfigured => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "kommo_not_configured",
                message,
            ),
            DirectoryError::Upstream(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "kommo_unavailable",
                message,
            ),
        }
    }
}

impl From<conversa_actors::store::StoreError> for ApiError {
    fn from(e: conversa_actors::store::StoreError) -> Self {
        EngineError::from(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    /// Says what a person can act on: a missing field is named as missing, a wrong value by
    /// its field and what was expected, never a Rust type name or axum's wording.
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is too large or could not be read",
            ),
            JsonRejection::JsonSyntaxError(e) => {
                let detail = serde_detail(&e.body_text());
                Self::bad_request(format!("the body is not valid JSON: {}", humane(&detail)))
            }
            JsonRejection::JsonDataError(e) => data_error(&serde_detail(&e.body_text())),
            other => Self::bad_request(other.body_text()),
        }
    }
}

/// The part of axum's rejection text that serde wrote (after the last "type: " / "JSON: ").
fn serde_detail(text: &str) -> String {
    for marker in ["into the target type: ", "as JSON: "] {
        if let Some((_, rest)) = text.split_once(marker) {
            return rest.to_owned();
        }
    }
    text.to_owned()
}

/// A data error (`path: problem`, or a bare problem at the top level) as field + message.
fn data_error(detail: &str) -> ApiError {
    let (path, problem) = match detail.split_once(": ") {
        Some((path, problem)) if !path.is_empty() && !path.contains(' ') && path != "." => {
            (Some(path.to_owned()), problem.to_owned())
        }
        _ => (None, detail.to_owned()),
    };
    let problem = humane(&problem);
    if let Some(rest) = problem.strip_prefix("missing field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        let field = match &path {
            Some(p) => format!("{p}.{name}"),
            None => name.to_owned(),
        };
        return ApiError::bad_field(&field, format!("`{field}` is missing"));
    }
    match path {
        Some(field) => ApiError::bad_field(&field, format!("`{field}`: {problem}")),
        None if problem.starts_with("invalid type") => {
            ApiError::bad_request(format!("the body must be a JSON object ({problem})"))
        }
        None => ApiError::bad_request(problem),
    }
}

/// serde's wording without positions and Rust type names.
fn humane(problem: &str) -> String {
    let mut text = problem.to_owned();
    if let Some(i) = text.find(" at line ") {
        text.truncate(i);
    }
    if text.starts_with("data did not match any variant") {
        return "has none of the accepted shapes (see /docs)".to_owned();
    }
    let mut out = Vec::new();
    let mut words = text.split(' ').peekable();
    while let Some(w) = words.next() {
        match w {
            "struct" | "enum" if words.peek().is_some() => {
                words.next();
                out.push(if w == "struct" {
                    "an object"
                } else {
                    "one of the known values"
                });
            }
            "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" | "usize" | "f64"
            | "u64," | "i64," => out.push("a number"),
            "map" => out.push("an object"),
            "sequence" => out.push("a list"),
            other => out.push(other),
        }
    }
    out.join(" ").replace("a a ", "a ").replace("a an ", "an ")
}

/// The store cannot be reached, did not answer in time, or a contact is too contended: not
/// known to be applied; retrying the same request is safe.
#[derive(utoipa::ToResponse)]
#[response(
    description = "The store cannot be reached, did not answer in time, or the contact is too \
                   contended: the change is not known to be applied; retrying the same request \
                   is safe",
    content_type = "application/json",
    example = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"})
)]
pub struct StoreUnavailable(pub ApiError);
