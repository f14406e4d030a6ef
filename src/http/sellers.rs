//! The sellers directory over HTTP, on the original system's paths:
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/vendedores` | every seller: `{"total": n, "vendedores": [...]}` |
//! | GET | `/vendedores/reais` | the active Kommo users |
//! | GET | `/vendedores/dinamicos` | real + custom |
//! | POST | `/vendedores/adicionar` | add a custom seller → 201 with the seller |
//! | POST | `/vendedores/sincronizar` | re-read the Kommo users now → `{"synced": n}` |
//! | GET | `/vendedor/conversa/{talk_id}` | who is responsible for a Kommo talk |
//! | GET | `/vendedor/contato/{contact_id}` | ... for a contact |
//! | GET | `/vendedor/lead/{lead_id}` | ... for a lead |
//!
//! The lookups answer `{"vendedor": {...}, "found_by": "conversation" | "contact" | "lead"}` or
//! a 404 JSON error. "Conversation" is the engine's conversation of the contact: the seller
//! holding it wins, then the contact's assignment, then the lead's responsible Kommo user (the
//! lead of the conversation's links when the request names none).
//!
//! The routes are generic over the router state: they need `Arc<SellerDirectory>` and
//! [`AppState`] to be [`FromRef`] of it (for `AppState` itself: one `FromRef` impl).

use std::sync::Arc;

use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::{JsonBody, KommoId};
use crate::sellers::{DirectoryError, NewSeller, Seller, SellerDirectory};

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<SellerDirectory>: FromRef<S>,
    AppState: FromRef<S>,
{
    Router::new()
        .route("/vendedores", get(all))
        .route("/vendedores/reais", get(real))
        .route("/vendedores/dinamicos", get(dynamic))
        .route("/vendedores/adicionar", post(add))
        .route("/vendedores/sincronizar", post(sync))
        .route("/vendedor/conversa/{talk_id}", get(for_talk))
        .route("/vendedor/contato/{contact_id}", get(for_contact))
        .route("/vendedor/lead/{lead_id}", get(for_lead))
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        let message = e.to_string();
        match e {
            DirectoryError::Invalid { field, message } => ApiError::bad_field(field, message),
            DirectoryError::Duplicate { field, .. } => ApiError {
                field: Some(field.to_owned()),
                ..ApiError::new(StatusCode::CONFLICT, "conflict", message)
            },
            DirectoryError::NotFound(_) => ApiError::not_found(message),
            DirectoryError::StoreUnavailable(_) => ApiError::unavailable(message),
            DirectoryError::Corrupt(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            DirectoryError::NotConfigured => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "kommo_not_configured",
                message,
            ),
            DirectoryError::Upstream(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "kommo_unavailable",
                message,
            ),
        }
    }
}

fn listing(sellers: Vec<Seller>) -> Json<Value> {
    Json(json!({ "total": sellers.len(), "vendedores": sellers }))
}

async fn all(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<Value>, ApiError> {
    Ok(listing(dir.all().await?))
}

async fn real(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<Value>, ApiError> {
    Ok(listing(dir.real().await?))
}

async fn dynamic(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<Value>, ApiError> {
    Ok(listing(dir.dynamic().await?))
}

/// `POST /vendedores/adicionar` as the original took it: Portuguese or English keys, areas as
/// a list or a comma-separated string, ids and phone as numbers or strings.
#[derive(Deserialize)]
struct AddBody {
    #[serde(default, alias = "nome")]
    name: Option<String>,
    #[serde(default)]
    contact_id: Option<KommoId>,
    #[serde(default, alias = "telefone")]
    phone: Option<Text>,
    #[serde(default, alias = "areas_atuacao", alias = "area_atuacao")]
    areas: Option<Areas>,
    #[serde(default)]
    kommo_user_id: Option<KommoId>,
}

/// A string, or a number taken as its digits.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("must be a string or a number"))?
        {
            Raw::Number(n) => Ok(Text(n.to_string())),
            Raw::Text(s) => Ok(Text(s)),
        }
    }
}

/// A list of strings, or one string of comma- or semicolon-separated areas.
struct Areas(Vec<String>);

impl<'de> Deserialize<'de> for Areas {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("must be a string or a list of strings"))?
        {
            Raw::One(s) => Ok(Areas(s.split([',', ';']).map(str::to_owned).collect())),
            Raw::Many(v) => Ok(Areas(v)),
        }
    }
}

async fn add(
    State(dir): State<Arc<SellerDirectory>>,
    JsonBody(body): JsonBody<AddBody>,
) -> Result<(StatusCode, Json<Seller>), ApiError> {
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_field("name", "name (or nome) is required"))?;
    let seller = dir
        .add_custom(NewSeller {
            name,
            contact_id: body.contact_id.map(|id| id.0),
            phone: body.phone.map(|p| p.0),
            areas: body.areas.map(|a| a.0).unwrap_or_default(),
            kommo_user_id: body.kommo_user_id.map(|id| id.0),
        })
        .await?;
    Ok((StatusCode::CREATED, Json(seller)))
}

async fn sync(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<Value>, ApiError> {
    let synced = dir.sync().await?;
    Ok(Json(json!({ "synced": synced })))
}

fn parse_id(field: &str, raw: &str) -> Result<u64, ApiError> {
    raw.trim()
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_field(field, format!("{field} must be a positive integer")))
}

/// The seller id the contact's conversation holds, and the lead it is linked to.
async fn conversation_hints(
    app: &AppState,
    contact_id: u64,
) -> Result<(Option<String>, Option<u64>), ApiError> {
    Ok(
        match app.engine().conversation(&app.contact(contact_id)).await? {
            Some((c, _)) => (c.phase.seller().map(|s| s.id.clone()), c.links.lead_id),
            None => (None, None),
        },
    )
}

fn found(hit: Option<(Seller, &'static str)>, what: String) -> Result<Json<Value>, ApiError> {
    let (seller, how) =
        hit.ok_or_else(|| ApiError::not_found(format!("no seller found for {what}")))?;
    Ok(Json(json!({ "vendedor": seller, "found_by": how })))
}

async fn for_talk(
    State(app): State<AppState>,
    State(dir): State<Arc<SellerDirectory>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let talk_id = parse_id("talk_id", &raw)?;
    let contact_id = dir
        .talk_contact(talk_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("talk {talk_id} not found in Kommo")))?;
    let (assigned, lead_id) = conversation_hints(&app, contact_id).await?;
    let hit = dir
        .responsible(
            Some(talk_id),
            Some(contact_id),
            lead_id,
            assigned.as_deref(),
        )
        .await?;
    found(hit, format!("talk {talk_id}"))
}

async fn for_contact(
    State(app): State<AppState>,
    State(dir): State<Arc<SellerDirectory>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let contact_id = parse_id("contact_id", &raw)?;
    let (assigned, lead_id) = conversation_hints(&app, contact_id).await?;
    let hit = dir
        .responsible(None, Some(contact_id), lead_id, assigned.as_deref())
        .await?;
    found(hit, format!("contact {contact_id}"))
}

async fn for_lead(
    State(dir): State<Arc<SellerDirectory>>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lead_id = parse_id("lead_id", &raw)?;
    let hit = dir.responsible(None, None, Some(lead_id), None).await?;
    found(hit, format!("lead {lead_id}"))
}
