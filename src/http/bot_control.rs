//! `POST /bot-control`: an operator pauses or resumes the bot for one contact, or asks its
//! status. Body as in the original API: `{"contact_id": 12345, "command": "pause"}`.

use axum::Json;
use axum::extract::State;
use conversa_actors::{BotCommand, Event};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::{JsonBody, KommoId};
use crate::state::AppState;
use conversa_actors::PhaseName;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(bot_control))
}

/// `POST /bot-control`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"contact_id": 12345, "command": "pause"}))]
pub struct BotControl {
    /// The customer's Kommo contact id.
    contact_id: KommoId,
    /// `pause`, `resume` or `status` (case-insensitive).
    #[schema(value_type = BotCommandName)]
    command: String,
}

/// What `/bot-control` does.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BotCommandName {
    /// Switch the bot off for this contact (phase `paused`).
    Pause,
    /// Switch it back on.
    Resume,
    /// Only say the phase.
    Status,
}

/// The answer of `/bot-control`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"bot_active": false, "command": "pause", "contact_id": 12345,
    "phase": "paused", "version": 1}))]
pub struct BotControlAnswer {
    /// Whether the bot may answer this contact (not `paused`, not `human_assigned`).
    pub bot_active: bool,
    pub command: BotCommandName,
    pub contact_id: u64,
    pub phase: PhaseName,
    /// The conversation's snapshot version (0: no conversation yet).
    pub version: u64,
}

const COMMANDS: [&str; 3] = ["pause", "resume", "status"];

impl BotCommandName {
    /// `pause`, `resume` or `status`, case-insensitive; anything else is a 400 naming `command`.
    fn parse(raw: &str) -> Result<Self, ApiError> {
        match raw.trim().to_lowercase().as_str() {
            "pause" => Ok(BotCommandName::Pause),
            "resume" => Ok(BotCommandName::Resume),
            "status" => Ok(BotCommandName::Status),
            other => Err(ApiError::bad_field(
                "command",
                format!("unknown command {other:?}; expected one of {COMMANDS:?}"),
            )),
        }
    }

    /// The conversation's event, if the command changes anything.
    fn event(self) -> Option<BotCommand> {
        match self {
            BotCommandName::Pause => Some(BotCommand::Pause),
            BotCommandName::Resume => Some(BotCommand::Resume),
            BotCommandName::Status => None,
        }
    }
}

/// Pause or resume the bot
///
/// An operator pauses or resumes the bot for one contact, or asks its status. The answer comes
/// once the change is durable.
#[utoipa::path(
    post,
    path = "/bot-control",
    tag = "conversations",
    request_body = BotControl,
    responses(
        (status = 200, description = "The phase after the command", body = BotControlAnswer),
        (status = 400, description = "Unknown command, or a bad `contact_id`", body = ApiError,
         examples(
            ("command" = (value = json!({"error": "bad_request", "field": "command",
                "message": "unknown command \"stop\"; expected one of [\"pause\", \"resume\", \"status\"]"}))),
            ("contact_id" = (value = json!({"error": "bad_request", "field": "contact_id",
                "message": "Failed to deserialize the JSON body into the target type: contact_id: must be a positive integer, got 0 at line 1 column 16"}))),
         )),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn bot_control(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<BotControl>,
) -> Result<Json<BotControlAnswer>, ApiError> {
    let key = app.contact(body.contact_id.0);
    let command = BotCommandName::parse(&body.command)?;
    let (phase, version) = match command.event() {
        Some(event) => {
            let event = Event::BotControl {
                command: event,
                by: "bot-control".into(),
            };
            let applied = app.engine().apply(key, event).await?;
            (applied.phase.kind(), applied.version)
        }
        None => match app.engine().conversation(&key).await? {
            Some((c, v)) => (c.phase().kind(), v),
            None => (PhaseName::Idle, 0),
        },
    };
    Ok(Json(BotControlAnswer {
        bot_active: phase.bot_active(),
        command,
        contact_id: key.contact_id,
        phase,
        version,
    }))
}
