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

/// `axum::Json` whose rejections are our JSON errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
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
                    .minimum(Some(1)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*[0-9]*[1-9][0-9]*\s*$")),
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
                if n == 0 {
                    return Err(E::custom("must be a positive integer, got 0"));
                }
                Ok(KommoId(n))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<KommoId, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("must be a positive integer, got {n}"))),
                }
            }

            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<KommoId, E> {
                Err(E::custom(format!("must be a positive integer, got {n}")))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<KommoId, E> {
                match s.trim().parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!("must be a positive integer, got {s:?}"))),
                }
            }
        }
        d.deserialize_any(Id)
    }
}
