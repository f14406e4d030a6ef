//! `POST /agendamento/request` (the original path): someone asks for a meeting with the
//! seller. Takes any of `contact_id`, `talk_id`, `lead_id` plus free-form details; identifies
//! the seller (the conversation's, then the contact's, then the lead's responsible user), moves
//! the conversation to `scheduling` and dispatches `scheduling` to n8n with the seller, the
//! contact, the lead and the recent timeline. The outcome comes back through `/send-response`
//! with `scheduling: {"status": ...}`; a timeout hands the conversation back to the bot.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use conversa_actors::{Effect, Event, Links, Rejection, SellerRef};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::sellers::FoundBy;
use crate::http::{JsonBody, KommoId};
use crate::sellers::DirectoryError;
use crate::sellers::Seller;
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
) -> Result<(StatusCode, Json<Value>), ApiError> {
    for (field, value) in &body {
        crate::http::bounded_json(field, value, crate::http::MAX_DETAILS_BYTES)?;
    }
    crate::http::bounded_json(
        "body",
        &Value::Object(body.clone()),
        crate::http::MAX_DETAILS_BYTES,
    )?;
    let contact_id = id_field(&body, "contact_id")?;
    let talk_id = id_field(&body, "talk_id")?;
    let lead_id = id_field(&body, "lead_id")?;
    if contact_id.is_none() && talk_id.is_none() && lead_id.is_none() {
        return Err(ApiError::bad_field(
            "contact_id",
            "give at least one of contact_id, talk_id, lead_id",
        ));
    }
    let sellers = app.sellers();
    // A talk of another contact is a mistake, not a link to record.
    if let (Some(contact), Some(talk)) = (contact_id, talk_id) {
        match sellers.talk_contact(talk).await {
            Ok(Some(of_talk)) if of_talk != contact => {
                return Err(unprocessable(
                    "talk_id",
                    format!("talk {talk} belongs to contact {of_talk}, not {contact}"),
                ));
            }
            Ok(_) | Err(crate::sellers::DirectoryError::NotConfigured) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // The conversation is the contact's; a talk names its contact.
    let contact_id = match (contact_id, talk_id) {
        (Some(c), _) => Some(c),
        (None, Some(t)) => sellers.talk_contact(t).await?,
        (None, None) => None,
    };
    let contact_id = match (contact_id, lead_id) {
        (Some(c), _) => c,
        (None, Some(lead)) => app.lead_contact(lead).await?.ok_or_else(|| {
            unprocessable(
                "lead_id",
                format!("lead {lead} has no contact to schedule with"),
            )
        })?,
        (None, None) => {
            return Err(unprocessable(
                "talk_id",
                "the talk's contact could not be found".into(),
            ));
        }
    };
    let key = app.contact(contact_id);
    let conversation = app.engine().conversation(&key).await?;
    // The seller holding the conversation, or the one who opened it proactively.
    let held_by = conversation.as_ref().and_then(|(c, _)| {
        c.phase
            .seller()
            .or(c.proactive.as_ref().map(|o| &o.seller))
            .map(|s| s.id.clone())
    });
    let mut lead_id = lead_id.or_else(|| conversation.as_ref().and_then(|(c, _)| c.links.lead_id));
    if let (None, Some(talk)) = (lead_id, talk_id) {
        lead_id = sellers.talk_lead(talk).await?;
    }
    if lead_id.is_none() {
        lead_id = app.contact_lead(contact_id).await?;
    }
    // Without Kommo nothing more can be found: no seller, not a passing outage.
    let found = match sellers
        .responsible(talk_id, Some(contact_id), lead_id, held_by.as_deref())
        .await
    {
        Err(DirectoryError::NotConfigured) => None,
        other => other?,
    };
    let Some((seller, found_by)) = found else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_seller",
            format!(
                "no seller is responsible for contact {contact_id}: none holds or opened its \
                 conversation, and neither the contact nor the lead has a responsible Kommo user \
                 who is a seller"
            ),
        ));
    };
    let (seller, found_by) = (Some(seller), Some(found_by));
    if lead_id.is_some() || talk_id.is_some() {
        let links = Links {
            lead_id,
            talk_id,
            chat_id: None,
        };
        app.engine().apply(key, Event::LinksSeen(links)).await?;
    }
    let mut request = body.clone();
    request.insert("contact_id".into(), json!(contact_id));
    request.insert("lead_id".into(), json!(lead_id));
    request.insert("seller".into(), json!(seller));
    let event = Event::SchedulingRequest {
        seller: seller.as_ref().map(|s| SellerRef {
            id: s.id.clone(),
            name: s.name.clone(),
        }),
        request: Value::Object(request),
    };
    let applied = app.engine().apply(key, event).await?;
    let outcome = applied.outcome.map_err(|r| {
        let code = match r {
            Rejection::HumanAssigned => "human_assigned",
            Rejection::Paused => "paused",
            _ => "already_scheduling",
        };
        ApiError::new(StatusCode::CONFLICT, code, r.to_string())
    })?;
    let dispatch_id = outcome.effects.iter().find_map(|e| match e {
        Effect::Dispatch(d) => Some(d.dispatch_id.clone()),
        _ => None,
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "accepted": true,
            "contact_id": contact_id,
            "lead_id": lead_id,
            "phase": applied.phase.name(),
            "dispatch_id": dispatch_id,
            "vendedor": seller,
            "found_by": found_by,
        })),
    ))
}

fn unprocessable(field: &str, message: String) -> ApiError {
    ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }
}
