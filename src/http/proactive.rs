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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::flows::FlowError;
use crate::flows::proactive::{self, NotOpened, Opened, Opening, Trigger, WantedSeller};
use crate::http::{JsonBody, KommoId};
use crate::state::AppState;
use conversa_actors::PhaseName;

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
    #[schema(nullable = false)]
    pub trigger_type: Option<Trigger>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub vendedor: Option<crate::sellers::Seller>,
    /// Why nothing was created (200): `duplicate` (a conversation is already live),
    /// `human_assigned`, `paused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reason: Option<NotOpened>,
}

impl From<Opened> for ProactiveAnswer {
    fn from(opened: Opened) -> Self {
        match opened {
            Opened::Yes {
                contact_id,
                phase,
                dispatch_id,
                seller,
                trigger,
            } => ProactiveAnswer {
                created: true,
                contact_id,
                phase,
                dispatch_id,
                trigger_type: Some(trigger),
                vendedor: Some(seller),
                reason: None,
            },
            Opened::No {
                contact_id,
                phase,
                reason,
            } => ProactiveAnswer {
                created: false,
                contact_id,
                phase,
                dispatch_id: None,
                trigger_type: None,
                vendedor: None,
                reason: Some(reason),
            },
        }
    }
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
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn start_proactive(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<StartProactive>,
) -> Result<(StatusCode, Json<ProactiveAnswer>), ApiError> {
    let opened = proactive::start(&app, body.opening()?).await?;
    let status = match opened {
        Opened::Yes { .. } => StatusCode::CREATED,
        Opened::No { .. } => StatusCode::OK,
    };
    Ok((status, Json(opened.into())))
}

impl StartProactive {
    /// The event, once its free-form parts are within bounds and its trigger is known.
    fn opening(&self) -> Result<Opening<'_>, ApiError> {
        if !(self.lead_data.is_object() || self.lead_data.is_null()) {
            return Err(ApiError::bad_field(
                "lead_data",
                "`lead_data` must be a JSON object (`{...}`)",
            ));
        }
        crate::http::bounded_json("lead_data", &self.lead_data, crate::http::MAX_DETAILS_BYTES)?;
        crate::http::bounded_text("area_atuacao", &self.area_atuacao, MAX_NAME_CHARS)?;
        let trigger = Trigger::parse(&self.trigger_type).ok_or_else(|| {
            let words = Trigger::ALL.map(Trigger::as_str);
            FlowError::unprocessable(
                "trigger_type",
                "unknown_trigger",
                format!("trigger_type must be one of {words:?}"),
            )
        })?;
        let seller = match &self.vendedor {
            SellerName::Text(t) => WantedSeller {
                id: Some(t.trim()),
                name: Some(t.trim()),
            },
            SellerName::Object { id, name } => WantedSeller {
                id: id.as_deref(),
                name: name.as_deref(),
            },
        };
        Ok(Opening {
            contact_id: self.contact_id.0,
            lead_id: self.lead_id.map(|l| l.0),
            seller,
            area: &self.area_atuacao,
            trigger,
            lead_data: self.lead_data.clone(),
        })
    }
}
