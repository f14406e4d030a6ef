//! `POST /send-response`: n8n's callback with the AI's reply (the original path).
//!
//! Body: `{"contact_id": 12345, "text": "...", "dispatch_id": "..."}`; `messages: [..]` for
//! several parts (strings or `{"text": ..}`); `scheduling: {"status": "confirmed"|"failed", ..}`
//! to settle a scheduling request. The reply reaches the customer only if the conversation is
//! still the bot's and the dispatch is current; otherwise the answer is 200 with
//! `{"delivered": false, "reason": ...}` and the timeline says why.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use conversa_actors::{Event, Rejection};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::auth::require_bearer;
use crate::http::{JsonBody, KommoId};

pub fn routes() -> Router<AppState> {
    Router::new().route("/send-response", post(send_response))
}

#[derive(Deserialize)]
struct Callback {
    contact_id: KommoId,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    messages: Vec<Part>,
    #[serde(default)]
    dispatch_id: Option<String>,
    #[serde(default)]
    scheduling: Option<Value>,
}

/// A part of a multi-part reply: a string, or an object with `text`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Part {
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
