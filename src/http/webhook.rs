//! `POST /webhooks/kommo` (the original path): Kommo's webhooks in.
//!
//! The secret in the URL is checked from the request's head ([`WebhookSecret`]); the body goes
//! to [`crate::flows::ingest`], which parses it whole (a malformed body gets a 400 naming the
//! bad key and changes nothing) and applies it; the answer is 2xx only once every item is
//! durable.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::flows::commands::CommandAnswer;
use crate::flows::ingest::{Ingested, ingest};
use crate::http::auth::secret_matches;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(with_query_token))
        .routes(routes!(with_path_secret))
}

/// Kommo's body as it sends it: `application/x-www-form-urlencoded` with PHP bracket keys
/// (`message[add][0][contact_id]=1298200`, brackets usually percent-encoded), several entities
/// and items per POST. Understood: `message[add]`, `outgoing_message[add]`, `talk[add|update]`,
/// `leads[add|update|status|responsible|...]`, `unsorted[add]`; others are listed in `unknown`.
/// At least one key has a name and a bracket (`entity[...]`); a key has at most 11 brackets;
/// a deeper key wins over a plain one of the same name, whatever their order; every
/// `account[id]` given is an id (1 to 15 digits) or blank. At most 10,000 pairs, repeated
/// keys counted (the schema sees only the last of each).
#[derive(ToSchema)]
#[schema(value_type = std::collections::HashMap<String, String>, example = json!({
    "message[add][0][id]": "c0925911-ce8f-4994-b117-542b5f28d036",
    "message[add][0][contact_id]": "1298200", "message[add][0][talk_id]": "109",
    "message[add][0][entity_id]": "878244", "message[add][0][entity_type]": "lead",
    "message[add][0][text]": "Oi", "message[add][0][type]": "incoming",
    "account[id]": "29876543", "account[subdomain]": "minhaempresa"}))]
pub struct KommoWebhookForm(pub String);

/// The same tree as JSON (items as an array or as an object keyed `"0"`, `"1"`...; scalars as
/// strings or numbers), as proxies and tests deliver it. At least one member holds a non-null
/// value. Limits the schema does not spell: at most 12 levels deep and 10,000 values; numbers
/// within a double's range; strings without lone surrogates (`\ud800`).
#[derive(ToSchema)]
#[schema(value_type = Object, example = json!({"message": {"add": [{
    "id": "c0925911-ce8f-4994-b117-542b5f28d036", "contact_id": 1298200, "talk_id": 109,
    "entity_id": 878244, "entity_type": "lead", "text": "Oi", "type": "incoming"}]}}))]
pub struct KommoWebhookJson(pub Value);

/// What the webhook did.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"changed": 1, "commands": [], "items": 1, "ok": true,
    "rejected": [], "unchanged": 0, "unknown": [], "unknown_count": 0}))]
pub struct WebhookAnswer {
    pub ok: bool,
    /// Events applied to conversations.
    pub items: u64,
    /// Events that changed something.
    pub changed: u64,
    /// Events that changed nothing (e.g. a redelivered message).
    pub unchanged: u64,
    /// `entity[action]` keys not understood (accepted and ignored), e.g. `task[add]`: the
    /// first 20.
    pub unknown: Vec<String>,
    /// How many keys were not understood in all.
    pub unknown_count: u64,
    /// Items that could not be read, each with the key at fault; the other items were
    /// applied. Also logged, counted (`conversa_kommo_webhook_items_rejected_total`) and listed in
    /// `GET /dead-letters`.
    pub rejected: Vec<RejectedItem>,
    /// Seller commands typed in WhatsApp (`/assumir 12345`...) and their answers, or
    /// `{"ok": false, "error": ApiError}` for a refused one.
    pub commands: Vec<WebhookCommand>,
}

/// A seller command typed in WhatsApp: its answer, or why it was refused.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum WebhookCommand {
    Done(CommandAnswer),
    Refused {
        /// Always `false`.
        ok: bool,
        error: ApiError,
    },
}

/// How many unknown keys of one body are named in the answer (`unknown_count` counts them all).
const ANSWERED_UNKNOWN_KEYS: usize = 20;

impl From<Ingested> for WebhookAnswer {
    fn from(done: Ingested) -> Self {
        WebhookAnswer {
            ok: true,
            items: done.items as u64,
            changed: done.changed as u64,
            unchanged: done.unchanged as u64,
            unknown_count: done.unknown.len() as u64,
            unknown: done
                .unknown
                .into_iter()
                .take(ANSWERED_UNKNOWN_KEYS)
                .collect(),
            rejected: done
                .rejected
                .into_iter()
                .map(|(key, error)| RejectedItem { key, error })
                .collect(),
            commands: done
                .commands
                .into_iter()
                .map(|c| match c {
                    Ok(answer) => WebhookCommand::Done(answer),
                    Err(e) => WebhookCommand::Refused {
                        ok: false,
                        error: e.into(),
                    },
                })
                .collect(),
        }
    }
}

/// A webhook item that could not be read.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"key": "message[add][1][contact_id]", "error": "missing"}))]
pub struct RejectedItem {
    /// The bracket key at fault.
    pub key: String,
    pub error: String,
}

/// Kommo webhook (?token=)
///
/// Kommo's webhooks in. Everything is parsed first (a malformed body gets a 400 naming the bad
/// key and changes nothing), then applied, and the answer is 2xx only once every item is
/// durable. Redelivery is harmless (message ids are deduplicated). With `WEBHOOK_SECRET` set,
/// the URL must carry it as `?token=` (or use `/webhooks/kommo/{secret}`).
#[utoipa::path(
    post,
    path = "/webhooks/kommo",
    tag = "webhooks",
    request_body(
        description = "Kommo's webhook: form-encoded bracket keys (as Kommo sends it) or JSON. \
            The body is read by its shape, whatever its Content-Type says: JSON when its first \
            byte after ASCII white space (space, tab, line feed, form feed, carriage return) is \
            `{` or `[` (a form encoder percent-encodes all of these), a form otherwise.",
        content(
            (KommoWebhookForm = "application/x-www-form-urlencoded"),
            (KommoWebhookJson = "application/json"),
        ),
    ),
    security(("webhook_token" = [])),
    responses(
        (status = 200, description = "Every item is durable", body = WebhookAnswer),
        (status = 400, description = "Malformed body: `field` is the bad key (bracket form); nothing changed",
         body = ApiError, example = json!({"error": "bad_request",
            "message": "malformed webhook: message[add][0][contact_id]: expected an unsigned integer, got \"abc\"",
            "field": "message[add][0][contact_id]"})),
        (status = 401, description = "Missing or wrong webhook secret", body = ApiError,
         example = json!({"error": "unauthorized", "message": "missing or wrong webhook secret"})),
        (status = 403, description = "The body comes from another Kommo account", body = ApiError,
         example = json!({"error": "wrong_account", "message": "this webhook comes from another Kommo account"})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn with_query_token(
    State(app): State<AppState>,
    _secret: WebhookSecret,
    body: Bytes,
) -> Result<Json<WebhookAnswer>, ApiError> {
    Ok(Json(ingest(&app, &body).await?.into()))
}

/// Kommo webhook (secret in the path)
///
/// The same as `POST /webhooks/kommo`, with `WEBHOOK_SECRET` as the last path segment (for
/// webhook settings that cannot carry a query string).
#[utoipa::path(
    post,
    path = "/webhooks/kommo/{secret}",
    tag = "webhooks",
    params(("secret" = String, Path, description = "`WEBHOOK_SECRET`")),
    request_body(
        description = "Kommo's webhook: form-encoded bracket keys (as Kommo sends it) or JSON. \
            The body is read by its shape, whatever its Content-Type says: JSON when its first \
            byte after ASCII white space (space, tab, line feed, form feed, carriage return) is \
            `{` or `[` (a form encoder percent-encodes all of these), a form otherwise.",
        content(
            (KommoWebhookForm = "application/x-www-form-urlencoded"),
            (KommoWebhookJson = "application/json"),
        ),
    ),
    security(()),
    responses(
        (status = 200, description = "Every item is durable", body = WebhookAnswer),
        (status = 400, description = "Malformed body: `field` is the bad key (bracket form); nothing changed",
         body = ApiError, example = json!({"error": "bad_request",
            "message": "malformed webhook: message[add][0][contact_id]: expected an unsigned integer, got \"abc\"",
            "field": "message[add][0][contact_id]"})),
        (status = 401, description = "Wrong webhook secret", body = ApiError,
         example = json!({"error": "unauthorized", "message": "missing or wrong webhook secret"})),
        (status = 403, description = "The body comes from another Kommo account", body = ApiError,
         example = json!({"error": "wrong_account", "message": "this webhook comes from another Kommo account"})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn with_path_secret(
    State(app): State<AppState>,
    _secret: WebhookSecret,
    body: Bytes,
) -> Result<Json<WebhookAnswer>, ApiError> {
    Ok(Json(ingest(&app, &body).await?.into()))
}

/// `WEBHOOK_SECRET` as the URL carries it (`?token=` or the last path segment), checked from
/// the request's head: a wrong secret is a 401 before the body is read.
pub struct WebhookSecret;

impl FromRequestParts<AppState> for WebhookSecret {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &app.0.webhook_secret else {
            return Ok(WebhookSecret);
        };
        let in_path = parts.uri.path().strip_prefix("/webhooks/kommo/").map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        });
        let given = in_path.or_else(|| {
            form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        match given {
            Some(g) if secret_matches(expected, &g) => Ok(WebhookSecret),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong webhook secret",
            )),
        }
    }
}
