//! `POST /agendamento/request` (the original path): someone asks for a meeting with the
//! seller. Takes any of `contact_id`, `talk_id`, `lead_id` plus free-form details; identifies
//! the seller (the conversation's, then the contact's, then the lead's responsible user), moves
//! the conversation to `scheduling` and dispatches `scheduling` to n8n with the seller, the
//! contact, the lead and the recent timeline. The outcome comes back through `/send-response`
//! with `scheduling: {"status": ...}`; a timeout hands the conversation back to the bot.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::flows::scheduling::{self, MeetingRequest};
use crate::http::{JsonBody, KommoId};
use crate::sellers::{FoundBy, Seller};
use crate::state::AppState;
use conversa_actors::PhaseName;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(request))
}

/// A scheduling request: at least one of `contact_id`, `talk_id`, `lead_id`; any other key is
/// passed to n8n as a detail (e.g. `preferencia`).
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"contact_id": 1298200, "preferencia": "amanhã às 10h"}))]
pub struct SchedulingRequest {
    #[schema(nullable = false)]
    pub contact_id: Option<KommoId>,
    #[schema(nullable = false)]
    pub talk_id: Option<KommoId>,
    #[schema(nullable = false)]
    pub lead_id: Option<KommoId>,
    /// Free-form details passed to n8n, e.g. `preferencia`.
    #[serde(flatten)]
    pub details: std::collections::BTreeMap<String, Value>,
}

/// The request was accepted: n8n is asked to schedule.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"accepted": true, "contact_id": 1298200, "lead_id": 878244,
    "phase": "scheduling", "dispatch_id": "0-1298200-3",
    "vendedor": {"id": "kommo-5551", "name": "Ana Souza", "kommo_user_id": 5551,
        "contact_id": 99999, "phone": null, "areas": ["Previdenciário"], "active": true,
        "source": "real"},
    "found_by": "lead"}))]
pub struct SchedulingAnswer {
    pub accepted: bool,
    pub contact_id: u64,
    pub lead_id: Option<u64>,
    pub phase: PhaseName,
    pub dispatch_id: Option<String>,
    /// The responsible seller, when one was found.
    pub vendedor: Option<Seller>,
    pub found_by: Option<FoundBy>,
}

/// A positive id from a number or a string of digits, or a 400 naming the field.
fn id_field(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    let bad = || ApiError::bad_field(field, format!("{field} must be a positive integer"));
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 1.0)
                    .map(|f| f as u64)
            })
            .filter(|v| (1..=crate::http::MAX_ID).contains(v))
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => crate::http::parse_id(s).map(Some).ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Request a meeting
///
/// Asks n8n to schedule a meeting with the responsible seller (the conversation's, then the
/// contact's, then the lead's responsible user): the conversation moves to `scheduling` and
/// n8n gets `event: "scheduling"` with the seller, the contact, the lead and the recent
/// timeline. The outcome comes back through `/send-response` with `scheduling`; a timeout
/// hands the conversation back to the bot.
#[utoipa::path(
    post,
    path = "/agendamento/request",
    tag = "flows",
    request_body = SchedulingRequest,
    responses(
        (status = 202, description = "Accepted: dispatched to n8n", body = SchedulingAnswer),
        (status = 400, description = "No id given, or an id that is not a positive integer", body = ApiError,
         example = json!({"error": "bad_request", "message": "give at least one of contact_id, talk_id, lead_id", "field": "contact_id"})),
        (status = 409, description = "The conversation cannot schedule now (`human_assigned`, `paused`, `already_scheduling`)",
         body = ApiError, example = json!({"error": "human_assigned", "message": "a seller holds the conversation"})),
        (status = 422, description = "The contact of the talk or lead cannot be found, or no seller is responsible", body = ApiError,
         examples(
            ("no_contact" = (value = json!({"error": "unprocessable", "message": "lead 878244 has no contact to schedule with", "field": "lead_id"}))),
            ("no_seller" = (value = json!({"error": "no_seller", "message": "no seller is responsible for contact 1298200: none holds or opened its conversation, and neither the contact nor the lead has a responsible Kommo user who is a seller"}))),
         )),
        (status = 503, description = "The store or Kommo cannot be reached", body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: lead: timed out"}))),
        )),
    ),
)]
async fn request(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<(StatusCode, Json<SchedulingAnswer>), ApiError> {
    for (field, value) in &body {
        crate::http::bounded_json(field, value, crate::http::MAX_DETAILS_BYTES)?;
    }
    crate::http::bounded_json(
        "body",
        &Value::Object(body.clone()),
        crate::http::MAX_DETAILS_BYTES,
    )?;
    let asked = MeetingRequest {
        contact_id: id_field(&body, "contact_id")?,
        talk_id: id_field(&body, "talk_id")?,
        lead_id: id_field(&body, "lead_id")?,
        details: body,
    };
    let done = scheduling::request(&app, asked).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SchedulingAnswer {
            accepted: true,
            contact_id: done.contact_id,
            lead_id: done.lead_id,
            phase: done.phase,
            dispatch_id: done.dispatch_id,
            vendedor: Some(done.seller),
            found_by: Some(done.found_by),
        }),
    ))
}
