//! `POST /start-proactive` (the original path and body): a marketing event opens a
//! conversation personalised with the seller.
//!
//! `{"contact_id", "lead_id", "vendedor", "area_atuacao", "trigger_type", "lead_data"}` with
//! `trigger_type` one of `formulario_preenchido`, `material_baixado`, `agendamento`. Answers
//! 201 with the dispatch; 200 `{"created": false, "reason": "duplicate"}` when a conversation
//! is already live (never over a seller's); 422 for an area outside `ELIGIBLE_AREAS` (compared
//! ignoring case and accents) or an unknown seller.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use conversa_actors::{Effect, Event, Links, Rejection, SellerRef};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::{JsonBody, KommoId};
use crate::sellers::Seller;
use crate::text::fold;

pub const TRIGGERS: [&str; 3] = ["formulario_preenchido", "material_baixado", "agendamento"];

pub fn routes() -> Router<AppState> {
    Router::new().route("/start-proactive", post(start_proactive))
}

#[derive(Deserialize)]
struct StartProactive {
    contact_id: KommoId,
    #[serde(default)]
    lead_id: Option<KommoId>,
    /// The seller: their id or name, or an object with `id` / `name` / `nome`.
    vendedor: SellerName,
    area_atuacao: String,
    trigger_type: String,
    #[serde(default)]
    lead_data: Value,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SellerName {
    Text(String),
    Object {
        #[serde(default)]
        id: Option<String>,
        #[serde(default, alias = "nome")]
        name: Option<String>,
    },
}

fn unprocessable(field: &str, error: &'static str, message: String) -> ApiError {
    ApiError {
        field: Some(field.to_owned()),
        ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error, message)
    }
}

/// Finds the seller by id, else by name (ignoring case and accents).
async fn find_seller(app: &AppState, wanted: &SellerName) -> Result<Seller, ApiError> {
    let (id, name) = match wanted {
        SellerName::Text(t) => (Some(t.trim()), Some(t.trim())),
        SellerName::Object { id, name } => (id.as_deref(), name.as_deref()),
    };
    if let Some(id) = id.filter(|i| !i.is_empty())
        && let Some(s) = app.sellers().by_id(id).await?
    {
        return Ok(s);
    }
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        let folded = fold(name);
        if let Some(s) = app
            .sellers()
            .all()
            .await?
            .into_iter()
            .find(|s| s.active && fold(&s.name) == folded)
        {
            return Ok(s);
        }
    }
    Err(unprocessable(
        "vendedor",
        "unknown_seller",
        format!("no active seller {:?}", name.or(id).unwrap_or_default()),
    ))
}

async fn start_proactive(
    State(app): State<AppState>,
    JsonBody(body): JsonBody<StartProactive>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    if let Some(lead) = body.lead_id {
        let links = Links {
            lead_id: Some(lead.0),
            ..Links::default()
        };
        app.engine().apply(key, Event::LinksSeen(links)).await?;
    }
    let details = json!({
        "area_atuacao": body.area_atuacao,
        "trigger_type": trigger,
        "lead_data": body.lead_data,
        "lead_id": body.lead_id.map(|l| l.0),
    });
    let event = Event::ProactiveStart {
        trigger: trigger.clone(),
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
