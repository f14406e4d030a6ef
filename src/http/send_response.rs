//! `POST /send-response`: n8n's callback with the AI's reply (the original path).
//!
//! Body: `{"contact_id": 12345, "text": "...", "dispatch_id": "..."}`; `messages: [..]` for
//! several parts (strings or `{"text": ..}`); `scheduling: {"status": "confirmed"|"failed", ..}`
//! to settle a scheduling request. The reply reaches the customer only if the conversation is
//! still the bot's and the dispatch is current; otherwise the answer is 200 with
//! `{"delivered": false, "reason": ...}` and the timeline says why.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use conversa_actors::{Event, Rejection};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::auth::require_bearer;
use crate::http::{JsonBody, KommoId};
use crate::openapi::schemas::Phase;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(send_response))
}

/// n8n's callback: the reply (`text` and/or `messages`) to the dispatch `dispatch_id`, and/or
/// the outcome of a scheduling request (`scheduling`).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"contact_id": 1298200, "dispatch_id": "0-1298200-1",
    "text": "Olá! Como posso ajudar?"}))]
pub struct Callback {
    /// The customer's Kommo contact id.
    contact_id: KommoId,
    /// The reply.
    #[serde(default)]
    #[schema(nullable = false)]
    text: Option<String>,
    /// A reply in several parts (sent in order).
    #[serde(default)]
    messages: Vec<Part>,
    /// The `dispatch_id` n8n was called with: a reply to an older or replaced dispatch is
    /// dropped (`delivered: false`).
    #[serde(default)]
    #[schema(nullable = false)]
    dispatch_id: Option<String>,
    /// Settles a scheduling request: `{"status": "confirmed" | "failed", ...details}`.
    #[serde(default)]
    #[schema(value_type = Option<SchedulingOutcome>, nullable = false)]
    scheduling: Option<Value>,
}

/// The outcome of a scheduling request; other keys are kept as details.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"status": "confirmed", "when": "amanhã 10h"}))]
pub struct SchedulingOutcome {
    pub status: SchedulingStatus,
    /// Details for the timeline and n8n, e.g. `when`.
    #[serde(flatten)]
    pub details: std::collections::BTreeMap<String, Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchedulingStatus {
    Confirmed,
    Failed,
}

/// What became of the reply.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"contact_id": 1298200, "delivered": true,
    "dispatch_id": "0-1298200-1", "phase": "bot_active"}))]
pub struct CallbackAnswer {
    pub contact_id: u64,
    pub dispatch_id: Option<String>,
    /// Whether the reply goes to the customer (present when there was a reply).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub delivered: Option<bool>,
    /// Why it was dropped: `human_assigned`, `paused`, `stale_dispatch`, `superseded`,
    /// `unknown_dispatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub phase: Option<Phase>,
    /// With `scheduling`: `confirmed`, `failed`, or `stale_dispatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub scheduling: Option<String>,
}

/// A part of a multi-part reply: a string, or an object with `text`.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Part {
    Text(String),
    Object { text: String },
}

impl Part {
    fn into_text(self) -> String {
        match self {
            Part::Text(t) | Part::Object { text: t } => t,
        }
    }
}

/// n8n's callback
///
/// The AI's reply. It reaches the customer only if the conversation is still the bot's and the
/// dispatch is current; otherwise the answer is 200 with `delivered: false` and a `reason`,
/// and the timeline says why. With `N8N_CALLBACK_TOKEN` set it needs
/// `Authorization: Bearer $N8N_CALLBACK_TOKEN` (not the API key).
#[utoipa::path(
    post,
    path = "/send-response",
    tag = "webhooks",
    request_body(content = Callback, examples(
        ("reply" = (summary = "A reply", value = json!({"contact_id": 1298200,
            "dispatch_id": "0-1298200-1", "text": "Olá! Como posso ajudar?"}))),
        ("parts" = (summary = "A reply in parts", value = json!({"contact_id": 1298200,
            "dispatch_id": "0-1298200-1", "messages": ["Olá!", {"text": "Como posso ajudar?"}]}))),
        ("scheduling" = (summary = "A scheduling outcome", value = json!({"contact_id": 1298200,
            "dispatch_id": "0-1298200-3", "text": "Agendado!",
            "scheduling": {"status": "confirmed", "when": "amanhã 10h"}}))),
    )),
    security(("n8n_callback" = [])),
    responses(
        (status = 200, description = "Delivered, or dropped with the reason", body = CallbackAnswer,
         examples(
            ("delivered" = (value = json!({"contact_id": 1298200, "delivered": true,
                "dispatch_id": "0-1298200-1", "phase": "bot_active"}))),
            ("dropped" = (summary = "A seller took over meanwhile", value = json!({
                "contact_id": 1298200, "delivered": false, "dispatch_id": "0-1298200-1",
                "phase": "human_assigned", "reason": "human_assigned"}))),
            ("scheduling" = (value = json!({"contact_id": 1298200, "delivered": true,
                "dispatch_id": "0-1298200-3", "phase": "bot_active", "scheduling": "confirmed"}))),
         )),
        (status = 400, description = "No `text`, `messages` or `scheduling`; a bad `scheduling.status`",
         body = ApiError, example = json!({"error": "bad_request", "field": "text",
            "message": "a reply needs `text`, `messages` or `scheduling`"})),
        (status = 401, description = "Missing or wrong `N8N_CALLBACK_TOKEN`", body = ApiError,
         example = json!({"error": "unauthorized", "message": "wrong bearer token"})),
        (status = 404, description = "No conversation for this contact", body = ApiError,
         example = json!({"error": "not_found", "message": "no conversation for contact 1298200"})),
        (status = 409, description = "The conversation refused the reply", body = ApiError,
         example = json!({"error": "conflict", "message": "the conversation is not scheduling"})),
        (status = 503, response = crate::openapi::StoreUnavailable),
    ),
)]
async fn send_response(
    State(app): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Callback>,
) -> Result<Json<Value>, ApiError> {
    require_bearer(app.0.callback_token.as_deref(), &headers)?;
    let key = app.contact(body.contact_id.0);
    if app.engine().conversation(&key).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "no conversation for contact {}",
            key.contact_id
        )));
    }
    let texts: Vec<String> = body
        .text
        .into_iter()
        .chain(body.messages.into_iter().map(Part::into_text))
        .filter(|t| !t.trim().is_empty())
        .collect();
    if texts.is_empty() && body.scheduling.is_none() {
        return Err(ApiError::bad_field(
            "text",
            "a reply needs `text`, `messages` or `scheduling`",
        ));
    }
    let mut answer = json!({
        "contact_id": key.contact_id,
        "dispatch_id": body.dispatch_id,
    });
    if !texts.is_empty() {
        let event = Event::Reply {
            dispatch_id: body.dispatch_id.clone(),
            texts,
        };
        let applied = app.engine().apply(key, event).await?;
        let outcome = applied.outcome.map_err(rejection)?;
        answer["delivered"] = json!(outcome.dropped.is_none());
        if let Some(reason) = outcome.dropped {
            answer["reason"] = json!(reason.as_str());
        }
        answer["phase"] = json!(applied.phase.name());
    }
    if let Some(scheduling) = body.scheduling {
        let confirmed = match scheduling.get("status").and_then(Value::as_str) {
            Some("confirmed") => true,
            Some("failed") => false,
            _ => {
                return Err(ApiError::bad_field(
                    "scheduling.status",
                    "scheduling.status must be \"confirmed\" or \"failed\"",
                ));
            }
        };
        let event = Event::SchedulingOutcome {
            dispatch_id: body.dispatch_id,
            confirmed,
            details: scheduling,
        };
        let applied = app.engine().apply(key, event).await?;
        let outcome = applied.outcome.map_err(rejection)?;
        answer["scheduling"] = json!(if outcome.dropped.is_some() {
            "stale_dispatch"
        } else if confirmed {
            "confirmed"
        } else {
            "failed"
        });
        answer["phase"] = json!(applied.phase.name());
    }
    Ok(Json(answer))
}

fn rejection(r: Rejection) -> ApiError {
    match r {
        Rejection::EmptyReply => ApiError::bad_field("text", r.to_string()),
        other => ApiError::new(StatusCode::CONFLICT, "conflict", other.to_string()),
    }
}
