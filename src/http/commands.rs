//! `POST /vendedor/comandos` (the original path and body): a seller's command
//! `{"message": "/assumir 12345", "contact_id": 99999}`, where `contact_id` is the seller's own
//! WhatsApp contact. See [`crate::commands`] for the rules.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::app::AppState;
use crate::commands;
use crate::error::ApiError;
use crate::http::{JsonBody, KommoId};

pub fn routes() -> Router<AppState> {
    Router::new().route("/vendedor/comandos", post(command))
}

#[derive(Deserialize)]
struct CommandBody {
    #[serde(alias = "mensagem")]
    message: String,
    contact_id: KommoId,
}

async fn command(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<CommandBody>,
) -> Result<Json<Value>, ApiError> {
    let seller = commands::commanding_seller(&app, body.contact_id.0).await?;
    let command = commands::parse(&body.message)?;
    Ok(Json(
        commands::execute(&app, &seller, command, "api").await?,
    ))
}
