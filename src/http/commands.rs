//! `POST /vendedor/comandos` (the original path and body): a seller's command
//! `{"message": "/assumir 12345", "contact_id": 99999}`, where `contact_id` is the seller's own
//! WhatsApp contact. See [`crate::flows::commands`] for the rules.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::flows::commands::{self, CommandAnswer};
use crate::http::{JsonBody, KommoId};
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(command))
}

/// A seller's command: `message` (or the original's `mensagem`, one of the two) and the
/// seller's own contact. Both keys follow the command pattern given in the served document.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"message": "/assumir 1298200", "contact_id": 99999}))]
pub struct CommandBody {
    /// `/assumir <contact_id>`, `/liberar <contact_id>` or `/status <contact_id>`
    /// (case-insensitive; `#12345` accepted; words apart by any Unicode white space, nothing
    /// after the id).
    #[serde(default)]
    message: Option<String>,
    /// The same as `message`, under the original's name: give one of the two.
    #[serde(default)]
    mensagem: Option<String>,
    /// The seller's own WhatsApp contact id (identifies the seller).
    contact_id: KommoId,
}

impl CommandBody {
    /// The command's text, from whichever of the two keys carries it.
    fn text(&self) -> Result<&str, ApiError> {
        match (&self.message, &self.mensagem) {
            (Some(text), None) | (None, Some(text)) => Ok(text),
            (Some(_), Some(_)) => Err(ApiError::bad_field(
                "mensagem",
                "give `message` or `mensagem`, not both",
            )),
            (None, None) => Err(ApiError::bad_field("message", "missing field `message`")),
        }
    }
}

/// Seller command
///
/// A seller's `/assumir`, `/liberar` or `/status` (the same text typed by the seller in their
/// WhatsApp chat works too, through the Kommo webhook, and never reaches n8n). A hold is a
/// lease: it returns to the bot `HUMAN_LEASE_MINUTES` after the seller's last message.
#[utoipa::path(
    post,
    path = "/vendedor/comandos",
    tag = "sellers",
    request_body(content = CommandBody, examples(
        ("assumir" = (summary = "Take over", value = json!({"message": "/assumir 1298200", "contact_id": 99999}))),
        ("liberar" = (summary = "Hand back to the bot", value = json!({"message": "/liberar 1298200", "contact_id": 99999}))),
    )),
    responses(
        (status = 200, description = "Done; the phase after it", body = CommandAnswer),
        (status = 400, description = "Unknown command (the message lists them) or no contact id", body = ApiError,
         example = json!({"error": "unknown_command", "field": "message",
            "message": "unknown command \"/voar 1\"; commands: /assumir <contact_id>, /liberar <contact_id>, /status <contact_id>"})),
        (status = 403, description = "`contact_id` is not a registered, active seller", body = ApiError,
         example = json!({"error": "not_a_seller", "message": "contact 99999 is not a registered, active seller"})),
        (status = 409, description = "Another seller holds the conversation (`holder` names them)", body = ApiError,
         example = json!({"error": "held_by_another_seller",
            "message": "conversation is held by Bruno Lima (custom-2)",
            "holder": {"id": "custom-2", "name": "Bruno Lima"}})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn command(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Json<CommandAnswer>, ApiError> {
    let command = commands::parse(body.text()?)?;
    let seller = commands::commanding_seller(&app, body.contact_id.0).await?;
    Ok(Json(
        commands::execute(&app, &seller, command, "api").await?,
    ))
}
