//! HTTP handlers, one module per resource, and the extractors they share.

pub mod auth;
pub mod bot_control;
pub mod commands;
pub mod conversations;
pub mod dead_letters;
pub mod health;
pub mod kommo;
pub mod layers;
pub mod metrics;
pub mod proactive;
pub mod scheduling;
pub mod sellers;
pub mod send_response;
pub mod view;
pub mod webhook;

use axum::extract::FromRequest;
use axum::http::Uri;
use serde::{Deserialize, Deserializer};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

use crate::error::ApiError;

/// A JSON object body (every JSON route takes one): `axum::Json`'s parsing, with our errors.
/// A body that is not an object (an array, a number…) is refused as such, never read as a
/// struct's fields in order.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_content_type);
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the body is too large or could not be read",
                )
            })?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::bad_request(
                "the body must be a JSON object (`{...}`)",
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(JsonBody(value))
    }
}

/// Query parameters (`?limit=10`), with errors that name the parameter:
/// `{"error": "bad_request", "field": "limit", "message": "limit: invalid digit found in string"}`.
pub struct QueryParams<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for QueryParams<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs = form_urlencoded::parse(query.as_bytes());
        let deserializer = serde_urlencoded::Deserializer::new(pairs);
        serde_path_to_error::deserialize(deserializer)
            .map(QueryParams)
            .map_err(|e| {
                let field = e.path().to_string();
                let message = format!("{field}: {}", e.inner());
                if field.is_empty() || field == "." {
                    ApiError::bad_request(format!("bad query string: {}", e.inner()))
                } else {
                    ApiError::bad_field(&field, message)
                }
            })
    }
}

/// Whether a `Content-Type` names JSON: `application/json` or `application/*+json`, with any
/// parameters.
fn is_json_content_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

pub use crate::flows::limits::{MAX_DETAILS_BYTES, bounded_json, bounded_text};

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

pub use crate::kommo::id::{ID_OR_BLANK_PATTERN, ID_PATTERN, MAX_ID, parse_id};

/// A path segment that must be a Kommo id, or a 400 naming the parameter.
pub fn path_id(field: &str, raw: &str) -> Result<u64, ApiError> {
    parse_id(raw).ok_or_else(|| {
        ApiError::bad_field(
            field,
            format!("{field} must be a positive integer of at most 15 digits"),
        )
    })
}

/// A count in a query string (`?limit=`): a whole number of any size (more than a route
/// serves means "as many as it serves"). Anything else is a 400 naming the parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Count(pub usize);

impl utoipa::PartialSchema for Count {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .description(Some(
                "A whole number; above the route's maximum it means the maximum",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Count {}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Count;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Count, E> {
                Ok(Count(usize::try_from(n).unwrap_or(usize::MAX)))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Count, E> {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(E::custom(format!("must be a whole number, got {s:?}")));
                }
                Ok(Count(s.parse().unwrap_or(usize::MAX)))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// A Kommo id as the original API took it: a positive integer, or a string of digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KommoId(pub u64);

/// In the OpenAPI document: an integer ≥ 1, or a string of digits.
impl utoipa::PartialSchema for KommoId {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(1))
                    .maximum(Some(MAX_ID)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(ID_PATTERN)),
            )
            .description(Some(
                "A Kommo id: a positive integer, or a string of digits (as the original API took it)",
            ))
            .examples([serde_json::json!(12345)])
            .into()
    }
}

impl utoipa::ToSchema for KommoId {}

impl<'de> Deserialize<'de> for KommoId {
    /// A visitor, not an untagged enum: serde's own errors (a missing field above all) pass
    /// through, so the edge can name the field as missing.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Id;
        impl serde::de::Visitor<'_> for Id {
            type Value = KommoId;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a positive integer (or a string of digits)")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<KommoId, E> {
                if n == 0 || n > MAX_ID {
                    return Err(E::custom(format!(
                        "must be a positive integer of at most 15 digits, got {n}"
                    )));
                }
                Ok(KommoId(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<KommoId, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("must be a positive integer, got {n}"))),
                }
            }

            /// A whole number written with a fraction (`179.0`) is that number, as JSON
            /// Schema's `integer` says.
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<KommoId, E> {
                if n.fract() == 0.0 && n >= 1.0 && n <= MAX_ID as f64 {
                    return self.visit_u64(n as u64);
                }
                Err(E::custom(format!("must be a positive integer, got {n}")))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KommoId, E> {
                match parse_id(s) {
                    Some(n) => Ok(KommoId(n)),
                    None => Err(E::custom(format!(
                        "must be a positive integer of at most 15 digits, got {s:?}"
                    ))),
                }
            }
        }
        d.deserialize_any(Id)
    }
}
