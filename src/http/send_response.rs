//! `POST /send-response`: n8n's callback with the AI's reply (the original path).
//!
//! Body: `{"contact_id": 12345, "text": "...", "dispatch_id": "..."}`; `messages: [..]` for
//! several parts (strings or `{"text": ..}`); `scheduling: {"status": "confirmed"|"failed", ..}`
//! to settle a scheduling request. The reply reaches the customer only if the conversation is
//! still the bot's and the dispatch is current; otherwise the answer is 200 with
//! `{"delivered": false, "reason": ...}` and the timeline says why.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::flows::reply::{self, Received, ReplyIn, Settled, Undelivered};
use crate::http::auth::require_bearer;
use crate::http::{JsonBody, KommoId};
use crate::reply::Strategy;
use crate::state::AppState;
use conversa_actors::PhaseName;

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
    /// The reply (at most 4096 characters).
    #[serde(default)]
    #[schema(max_length = 4096)]
    text: Option<String>,
    /// A reply in several parts (sent in order, after `text` if both are given; at most 10,
    /// each at most 4096 characters).
    #[serde(default)]
    #[schema(max_items = 10)]
    messages: Vec<Part>,
    /// The `dispatch_id` n8n was called with: a reply to an older or replaced dispatch is
    /// dropped (`delivered: false`). Required with `reply_token`.
    #[serde(default)]
    #[schema(max_length = 128)]
    dispatch_id: Option<String>,
    /// Settles a scheduling request: `{"status": "confirmed" | "failed", ...details}`.
    #[serde(default)]
    #[schema(value_type = Option<SchedulingOutcome>)]
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
    /// Whether the reply channel accepted the reply (every part of it) before this answer
    /// (present when there was a reply). With `channel: "note"` it became a note on the lead,
    /// not a WhatsApp message.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub delivered: Option<bool>,
    /// The channel that took it: `salesbot` (WhatsApp) or `note` (a note on the lead only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    pub channel: Option<Strategy>,
    /// Why it was not delivered: `queued` (still in the outbox, being retried or waiting for
    /// its next part), `no_lead` (nothing to deliver to), `kommo_not_configured`,
    /// `outcome_unknown` (the Salesbot may have run; never sent again), `failed`, or the
    /// fence reasons `human_assigned`, `paused`, `stale_dispatch`, `superseded`,
    /// `unknown_dispatch`, `already_answered` (a retried callback; dropped before any
    /// delivery).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    pub reason: Option<Undelivered>,
    /// With `reason: "failed"` or `"queued"`: the channel's last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
    /// How many parts of a multi-part reply went out before this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub parts_sent: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub phase: Option<PhaseName>,
    /// With `scheduling`: `confirmed`, `failed`, or `stale_dispatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    pub scheduling: Option<Settled>,
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
/// and the timeline says why. It needs proof that it answers a real dispatch: the
/// `?reply_token=` conversa put in the dispatch's `callback_url` (post to that URL as it is),
/// or `Authorization: Bearer $N8N_CALLBACK_TOKEN` (not the API key). Without either it is
/// refused with 401 before its body is read.
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
    params(
        ("contact_id" = Option<String>, Query, description = "The dispatch's contact, as in its `callback_url` (ignored with the bearer token)"),
        ("dispatch_id" = Option<String>, Query, description = "The dispatch answered, as in its `callback_url` (a body without `dispatch_id` answers it)"),
        ("reply_token" = Option<String>, Query,
         description = "The dispatch's reply token, as in its `callback_url`; not needed with `N8N_CALLBACK_TOKEN` as a bearer token"),
    ),
    security(("reply_token" = []), ("n8n_callback" = [])),
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
        (status = 401, description = "No proof: neither the dispatch's `reply_token` nor `N8N_CALLBACK_TOKEN`, or a wrong one", body = ApiError,
         example = json!({"error": "unauthorized", "message": "the `reply_token` is not the one of this contact's `dispatch_id`"})),
        (status = 404, description = "No conversation for this contact", body = ApiError,
         example = json!({"error": "not_found", "message": "no conversation for contact 1298200"})),
        (status = 409, description = "The conversation refused the reply", body = ApiError,
         example = json!({"error": "conflict", "message": "the conversation is not scheduling"})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn send_response(
    State(app): State<AppState>,
    proof: ReplyProof,
    JsonBody(mut body): JsonBody<Callback>,
) -> Result<Json<CallbackAnswer>, ApiError> {
    proof.check(body.contact_id.0, &mut body.dispatch_id)?;
    let reply = ReplyIn {
        contact_id: body.contact_id.0,
        text: body.text,
        parts: body.messages.into_iter().map(Part::into_text).collect(),
        dispatch_id: body.dispatch_id,
        scheduling: body.scheduling,
    };
    Ok(Json(reply::receive(&app, reply).await?.into()))
}

impl From<Received> for CallbackAnswer {
    fn from(r: Received) -> Self {
        let delivery = r.delivery;
        CallbackAnswer {
            contact_id: r.contact_id,
            dispatch_id: r.dispatch_id,
            delivered: delivery.as_ref().map(|d| d.delivered),
            channel: delivery.as_ref().and_then(|d| d.channel),
            reason: delivery.as_ref().and_then(|d| d.reason),
            error: delivery.as_ref().and_then(|d| d.error.clone()),
            parts_sent: delivery.as_ref().and_then(|d| d.parts_sent),
            phase: r.phase,
            scheduling: r.scheduling,
        }
    }
}

/// How a callback proves it comes from the n8n run conversa called: the bearer token
/// `N8N_CALLBACK_TOKEN`, or the `callback_url` conversa sent with the dispatch
/// (`?contact_id=..&dispatch_id=..&reply_token=..`, the token an HMAC of the other two).
/// Checked from the request's head alone, so a callback without a valid proof is refused
/// before its body is read.
pub enum ReplyProof {
    Bearer,
    /// A verified reply token: the reply answers this dispatch of this contact.
    Token {
        contact_id: u64,
        dispatch_id: String,
    },
}

impl FromRequestParts<AppState> for ReplyProof {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        if let Some(expected) = app.0.callback_token.as_deref()
            && parts.headers.contains_key(header::AUTHORIZATION)
        {
            require_bearer(Some(expected), &parts.headers)?;
            return Ok(ReplyProof::Bearer);
        }
        let (mut contact, mut dispatch, mut token) = (None, None, None);
        for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "contact_id" => contact = v.trim().parse::<u64>().ok(),
                "dispatch_id" => dispatch = Some(v.into_owned()),
                "reply_token" => token = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(contact_id), Some(dispatch_id), Some(token)) = (contact, dispatch, token) else {
            return Err(unauthorized(
                "a callback needs its `callback_url` as conversa sent it (`contact_id`, `dispatch_id` and `reply_token`) or `Authorization: Bearer $N8N_CALLBACK_TOKEN`",
            ));
        };
        if !app
            .0
            .reply_tokens
            .verify(app.contact(contact_id), &dispatch_id, &token)
        {
            return Err(unauthorized(
                "the `reply_token` is not the one of this `contact_id` and `dispatch_id`",
            ));
        }
        Ok(ReplyProof::Token {
            contact_id,
            dispatch_id,
        })
    }
}

impl ReplyProof {
    /// Whether the proof covers the body's reply; a body without `dispatch_id` answers the
    /// dispatch its `callback_url` named.
    fn check(&self, contact_id: u64, dispatch_id: &mut Option<String>) -> Result<(), ApiError> {
        let ReplyProof::Token {
            contact_id: proven_contact,
            dispatch_id: proven_dispatch,
        } = self
        else {
            return Ok(());
        };
        let dispatch = dispatch_id.get_or_insert_with(|| proven_dispatch.clone());
        if *proven_contact != contact_id || dispatch != proven_dispatch {
            return Err(unauthorized(
                "the `callback_url` proves a reply to another contact or dispatch than the body names",
            ));
        }
        Ok(())
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}
