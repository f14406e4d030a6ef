//! `POST /start-proactive` (the original path and body): a marketing event opens a
//! conversation personalised with the seller.
//!
//! `{"contact_id", "lead_id", "vendedor", "area_atuacao", "trigger_type", "lead_data"}` with
//! `trigger_type` one of `formulario_preenchido`, `material_baixado`, `agendamento`. Answers
//! 201 with the dispatch; 200 `{"created": false, "reason": "duplicate"}` when a conversation
//! is already live (never over a seller's); 422 for an area outside `ELIGIBLE_AREAS` (compared
//! ignoring case and accents) or an unknown seller.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use conversa_actors::{Effect, Event, Links, Rejection, SellerRef};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::{JsonBody, KommoId};
use crate::sellers::Seller;
use crate::text::fold;
use conversa_actors::PhaseName;

pub const TRIGGERS: [&str; 3] = ["formulario_preenchido", "material_baixado", "agendamento"];

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start_proactive))
}

/// A marketing event that opens a conversation.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"contact_id": 1298200, "lead_id": 878244, "vendedor": "Ana Souza",
    "area_atuacao": "Previdenciário", "trigger_type": "formulario_preenchido",
    "lead_data": {"nome": "Maria"}}))]
pub struct StartProactive {
    /// The customer's Kommo contact id.
    contact_id: KommoId,
    /// The customer's lead, if known.
    #[serde(default)]
    lead_id: Option<KommoId>,
    /// The seller: their id or name, or an object with `id` / `name` / `nome`.
    vendedor: SellerName,
    /// The practice area; must be in `ELIGIBLE_AREAS` when that is set (compared ignoring
    /// case and accents).
    area_atuacao: String,
    #[schema(value_type = Trigger)]
    trigger_type: String,
    /// Anything n8n should know about the lead (passed through).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    lead_data: Value,
}

/// The longest practice area accepted, in characters.
const MAX_NAME_CHARS: usize = 200;

/// What happened.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    FormularioPreenchido,
    MaterialBaixado,
    Agendamento,
}

/// A seller's id or name, or an object with `id` and/or `name` (`nome`).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SellerName {
    Text(String),
    Object {
        #[serde(default)]
        #[schema(nullable = false)]
        id: Option<String>,
        #[serde(default, alias = "nome")]
        #[schema(nullable = false)]
        name: Option<String>,
    },
}

/// The conversation was opened (201), or not (200 `created: false` with a `reason`).
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"created": true, "contact_id": 1298200, "phase": "proactive",
    "dispatch_id": "0-1298200-2", "trigger_type": "formulario_preenchido",
    "vendedor": {"id": "custom-1", "name": "Ana Souza", "kommo_user_id": null,
        "contact_id": 99999, "phone": null, "areas": ["Previdenciário"], "active": true,
        "source": "custom"}}))]
pub struct ProactiveAnswer {
    pub created: bool,
    pub contact_id: u64,
    pub phase: PhaseName,
    /// The n8n dispatch (201).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Trigger>, nullable = false)]
    pub trigger_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub vendedor: Option<crate::sellers::Seller>,
    /// Why nothing was created (200): `duplicate` (a conversation is already live),
    /// `human_assigned`, `paused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<String>,
}

fn unprocessable(field: &str, error: &'static str, message: String) -> ApiError {
    ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, message)
    }
}

/// Finds the seller by id, else by name: the one active seller whose name is the given one
/// (ignoring case and accents). An ambiguous or unknown name is a 422 listing the candidates
/// (the sellers of that name, or those whose name contains it).
async fn find_seller(app: &AppState, wanted: &SellerName) -> Result<Seller, ApiError> {
    let (id, name) = match wanted {
        SellerName::Text(t) => (Some(t.trim()), Some(t.trim())),
        SellerName::Object { id, name } => (id.as_deref(), name.as_deref()),
    };
    if let Some(id) = id.filter(|i| !i.is_empty())
        && let Some(s) = app.sellers().by_id(id).await?
        && s.active
    {
        return Ok(s);
    }
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Err(unprocessable(
            "vendedor",
            "unknown_seller",
            format!("no active seller {:?}", id.unwrap_or_default()),
        ));
    };
    let folded = fold(name);
    let active: Vec<Seller> = app
        .sellers()
        .all()
        .await?
        .into_iter()
        .filter(|s| s.active)
        .collect();
    let mut same: Vec<&Seller> = active.iter().filter(|s| fold(&s.name) == folded).collect();
    if same.len() == 1 {
        return Ok(same.remove(0).clone());
    }
    let listed = |sellers: Vec<&Seller>| {
        sellers
            .iter()
            .take(10)
            .map(|s| format!("{} ({})", s.name, s.id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if same.len() > 1 {
        return Err(unprocessable(
            "vendedor",
            "ambiguous_seller",
            format!(
                "{} active sellers are named {name:?}: {}; give the seller's id",
                same.len(),
                listed(same)
            ),
        ));
    }
    let similar: Vec<&Seller> = active
        .iter()
        .filter(|s| {
            fold(&s.name).split(' ').any(|w| w == folded) || fold(&s.name).contains(&folded)
        })
        .collect();
    let message = if similar.is_empty() {
        format!("no active seller {name:?}")
    } else {
        format!(
            "no active seller {name:?}; did you mean: {}?",
            listed(similar)
        )
    };
    Err(unprocessable("vendedor", "unknown_seller", message))
}

/// Start a proactive conversation
///
/// A marketing event (a form filled, a material downloaded, a meeting booked) opens a
/// conversation personalised with the seller: n8n is called with `event: "proactive"`. Never
/// over a live conversation or a seller's.
#[utoipa::path(
    post,
    path = "/start-proactive",
    tag = "flows",
    request_body = StartProactive,
    responses(
        (status = 201, description = "Opened: the dispatch to n8n", body = ProactiveAnswer),
        (status = 200, description = "Not opened: a conversation is already live", body = ProactiveAnswer,
         example = json!({"created": false, "reason": "duplicate", "contact_id": 1298200, "phase": "bot_active"})),
        (status = 400, description = "A missing or malformed field", body = ApiError,
         example = json!({"error": "bad_request",
            "message": "Failed to deserialize the JSON body into the target type: missing field `trigger_type` at line 1 column 134"})),
        (status = 422, description = "Unknown trigger, area outside `ELIGIBLE_AREAS`, or unknown seller", body = ApiError,
         examples(
            ("unknown_trigger" = (value = json!({"error": "unknown_trigger", "field": "trigger_type",
                "message": "trigger_type must be one of [\"formulario_preenchido\", \"material_baixado\", \"agendamento\"]"}))),
            ("area_not_eligible" = (value = json!({"error": "area_not_eligible", "field": "area_atuacao",
                "message": "area \"Trabalhista\" is not in ELIGIBLE_AREAS"}))),
            ("unknown_seller" = (value = json!({"error": "unknown_seller", "field": "vendedor",
                "message": "no active seller \"Ana Souza\""}))),
         )),
        (status = 503, response = crate::openapi::StoreUnavailable),
    ),
)]
async fn start_proactive(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<StartProactive>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if !(body.lead_data.is_object() || body.lead_data.is_null()) {
        return Err(ApiError::bad_field(
            "lead_data",
            "`lead_data` must be a JSON object (`{...}`)",
        ));
    }
    crate::http::bounded_json("lead_data", &body.lead_data, crate::http::MAX_DETAILS_BYTES)?;
    crate::http::bounded_text("area_atuacao", &body.area_atuacao, MAX_NAME_CHARS)?;
    let trigger = body.trigger_type.trim().to_lowercase();
    if !TRIGGERS.contains(&trigger.as_str()) {
        return Err(unprocessable(
            "trigger_type",
            "unknown_trigger",
            format!("trigger_type must be one of {TRIGGERS:?}"),
        ));
    }
    if !app.area_is_eligible(&body.area_atuacao) {
        return Err(unprocessable(
            "area_atuacao",
            "area_not_eligible",
            format!("area {:?} is not in ELIGIBLE_AREAS", body.area_atuacao),
        ));
    }
    let seller = find_seller(&app, &body.vendedor).await?;
    let key = app.contact(body.contact_id.0);
    // No lead anywhere: refused before n8n is called (the reply would have nowhere to go).
    let lead_id = match body.lead_id {
        Some(lead) => Some(lead.0),
        None => match app.contact_lead(key.contact_id).await? {
            Some(lead) => Some(lead),
            None if app.kommo().is_none() => None,
            None => {
                return Err(unprocessable(
                    "lead_id",
                    "no_lead",
                    format!(
                        "contact {} has no lead in Kommo: give lead_id, or create a lead for the contact",
                        key.contact_id
                    ),
                ));
            }
        },
    };
    if let Some(lead) = lead_id {
        let links = Links {
            lead_id: Some(lead),
            ..Links::default()
        };
        app.engine().apply(key, Event::LinksSeen(links)).await?;
    }
    let details = json!({
        "area_atuacao": body.area_atuacao,
        "trigger_type": trigger,
        "lead_data": body.lead_data,
        "lead_id": lead_id,
        "seller": {"id": seller.id, "name": seller.name},
    });
    let event = Event::ProactiveStart {
        trigger: trigger.clone(),
        area: Some(body.area_atuacao.trim().to_owned()).filter(|a| !a.is_empty()),
        seller: SellerRef {
            id: seller.id.clone(),
            name: seller.name.clone(),
        },
        details,
    };
    let applied = app.engine().apply(key, event).await?;
    let outcome = match applied.outcome {
        Ok(o) => o,
        Err(rejection) => {
            let reason = match rejection {
                Rejection::HumanAssigned => "human_assigned",
                Rejection::Paused => "paused",
                _ => "duplicate",
            };
            return Ok((
                StatusCode::OK,
                Json(json!({
                    "created": false,
                    "reason": reason,
                    "contact_id": key.contact_id,
                    "phase": applied.phase.name(),
                })),
            ));
        }
    };
    let dispatch_id = outcome.effects.iter().find_map(|e| match e {
        Effect::Dispatch(d) => Some(d.dispatch_id.clone()),
        _ => None,
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "created": true,
            "contact_id": key.contact_id,
            "phase": applied.phase.name(),
            "dispatch_id": dispatch_id,
            "trigger_type": trigger,
            "vendedor": seller,
        })),
    ))
}
