//! `POST /bot-control`: an operator pauses or resumes the bot for one contact, or asks its
//! status. Body as in the original API: `{"contact_id": 12345, "command": "pause"}`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use conversa_actors::{BotCommand, Event};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::view::ConversationView;
use crate::http::{JsonBody, KommoId};

pub fn routes() -> Router<AppState> {
    Router::new().route("/bot-control", post(bot_control))
}

#[derive(Deserialize)]
struct BotControl {
    contact_id: KommoId,
    command: String,
}

const COMMANDS: [&str; 3] = ["pause", "resume", "status"];

async fn bot_control(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<BotControl>,
) -> Result<Json<Value>, ApiError> {
    let key = app.contact(body.contact_id.0);
    let command = match body.command.trim().to_lowercase().as_str() {
        "pause" => Some(BotCommand::Pause),
        "resume" => Some(BotCommand::Resume),
        "status" => None,
        other => {
            return Err(ApiError::bad_field(
                "command",
                format!("unknown command {other:?}; expected one of {COMMANDS:?}"),
            ));
        }
    };
    let (phase, version) = match command {
        Some(command) => {
            let event = Event::BotControl {
                command,
                by: "bot-control".into(),
            };
            let applied = app.engine().apply(key, event).await?;
            (applied.phase.name(), applied.version)
        }
        None => match app.engine().conversation(&key).await? {
            Some((c, v)) => {
                let view = ConversationView::new(&c, v);
                (view.phase, v)
            }
            None => ("idle", 0),
        },
    };
    Ok(Json(json!({
        "contact_id": key.contact_id,
        "command": body.command.trim().to_lowercase(),
        "phase": phase,
        "bot_active": !matches!(phase, "paused" | "human_assigned"),
        "version": version,
    })))
}
