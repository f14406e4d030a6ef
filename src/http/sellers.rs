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

use axum::Json;
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::flows::responsibility::{self, Responsible};
use crate::http::{JsonBody, KommoId, path_id};
use crate::sellers::{FoundBy, NewSeller, Seller, SellerDirectory};
use crate::state::AppState;

pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<SellerDirectory>: FromRef<S>,
    AppState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(all))
        .routes(routes!(real))
        .routes(routes!(dynamic))
        .routes(routes!(add))
        .routes(routes!(attach_whatsapp))
        .routes(routes!(sync))
        .routes(routes!(for_talk))
        .routes(routes!(for_contact))
        .routes(routes!(for_lead))
}

/// A list of sellers.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"total": 1, "vendedores": [{"id": "custom-1", "name": "Ana Souza",
    "kommo_user_id": null, "contact_id": 99999, "phone": null, "areas": ["Previdenciário"],
    "active": true, "source": "custom"}]}))]
pub struct SellerList {
    pub total: u64,
    pub vendedores: Vec<crate::sellers::Seller>,
}

/// Who is responsible, and how it was found.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"vendedor": {"id": "kommo-5551", "name": "Ana Souza",
    "kommo_user_id": 5551, "contact_id": 99999, "phone": null, "areas": ["Previdenciário"],
    "active": true, "source": "real"}, "found_by": "lead"}))]
#[schema(as = Responsible)]
pub struct ResponsibleAnswer {
    pub vendedor: crate::sellers::Seller,
    pub found_by: FoundBy,
}

/// `POST /vendedores/sincronizar`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"synced": 4}))]
pub struct Synced {
    /// How many real sellers (active Kommo users) there are now.
    pub synced: u64,
}

impl From<Vec<Seller>> for SellerList {
    fn from(sellers: Vec<Seller>) -> Self {
        SellerList {
            total: sellers.len() as u64,
            vendedores: sellers,
        }
    }
}

impl From<Responsible> for ResponsibleAnswer {
    fn from((vendedor, found_by): Responsible) -> Self {
        ResponsibleAnswer { vendedor, found_by }
    }
}

/// All sellers
///
/// Every seller: real (Kommo users), then fictitious (configuration), then custom (API).
#[utoipa::path(
    get,
    path = "/vendedores",
    tag = "sellers",
    responses(
        (status = 200, description = "The sellers", body = SellerList),
        (status = 503, description = "The store (or Kommo, for the real sellers) cannot be reached",
         body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: users: timed out"}))),
         )),
    ),
)]
async fn all(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<SellerList>, ApiError> {
    Ok(Json(dir.all().await?.into()))
}

/// Real sellers
///
/// The active Kommo users.
#[utoipa::path(
    get,
    path = "/vendedores/reais",
    tag = "sellers",
    responses(
        (status = 200, description = "The active Kommo users", body = SellerList),
        (status = 503, description = "The store or Kommo cannot be reached",
         body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: users: timed out"}))),
         )),
    ),
)]
async fn real(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<SellerList>, ApiError> {
    Ok(Json(dir.real().await?.into()))
}

/// Real and custom sellers
///
/// The "dinâmicos": active Kommo users and the sellers added through the API.
#[utoipa::path(
    get,
    path = "/vendedores/dinamicos",
    tag = "sellers",
    responses(
        (status = 200, description = "Real and custom sellers", body = SellerList),
        (status = 503, description = "The store or Kommo cannot be reached",
         body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: users: timed out"}))),
         )),
    ),
)]
async fn dynamic(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<SellerList>, ApiError> {
    Ok(Json(dir.dynamic().await?.into()))
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

/// A custom seller. `name` (or `nome`) is required; the aliases of the original API are
/// accepted (one of each pair).
#[derive(ToSchema)]
#[schema(example = json!({"nome": "Ana Souza", "contact_id": 99999, "areas": ["Previdenciário"]}))]
#[allow(dead_code)]
pub struct AddSeller {
    /// The seller's name.
    name: Option<String>,
    /// The seller's name (alias of `name`).
    nome: Option<String>,
    /// The seller's own WhatsApp contact in Kommo (so their commands are recognised).
    contact_id: Option<KommoId>,
    /// Phone: digits, or a number.
    phone: Option<PhoneText>,
    /// Alias of `phone`.
    telefone: Option<PhoneText>,
    /// Practice areas: a list, or one string separated by commas or semicolons.
    areas: Option<AreasInput>,
    /// Alias of `areas`.
    areas_atuacao: Option<AreasInput>,
    /// Alias of `areas`.
    area_atuacao: Option<AreasInput>,
    /// The seller's Kommo user, if any.
    kommo_user_id: Option<KommoId>,
}

/// A phone: a string, or a number taken as its digits.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum PhoneText {
    Text(String),
    Number(u64),
}

/// In the OpenAPI document: what the directory accepts, 8 to 15 digits (a blank string is no
/// phone).
impl utoipa::PartialSchema for PhoneText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^(\s*|[^0-9]*([0-9][^0-9]*){8,15})$")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(10_000_000))
                    .maximum(Some(999_999_999_999_999u64)),
            )
            .description(Some(
                "A phone with 8 to 15 digits: a string (any separators), or a number",
            ))
            .examples([serde_json::json!("+55 11 98765-4321")])
            .into()
    }
}

impl utoipa::ToSchema for PhoneText {}

/// Areas: a list of strings, or one string of comma- or semicolon-separated areas.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AreasInput {
    Many(Vec<String>),
    One(String),
}

/// A string, or a number taken as its digits.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            // A whole number written with a fraction (`5511999990000.0`), as JSON Schema's
            // `integer` allows.
            Float(f64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("must be a string or a number"))?
        {
            Raw::Number(n) => Ok(Text(n.to_string())),
            Raw::Float(f) if f.fract() == 0.0 && (0.0..1e16).contains(&f) => {
                Ok(Text((f as u64).to_string()))
            }
            Raw::Float(_) => Err(serde::de::Error::custom(
                "must be a string or a whole number",
            )),
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

/// Add a seller
///
/// Adds a custom seller. Portuguese or English keys, areas as a list or a comma-separated
/// string, ids and phone as numbers or strings.
#[utoipa::path(
    post,
    path = "/vendedores/adicionar",
    tag = "sellers",
    request_body = AddSeller,
    responses(
        (status = 201, description = "The new seller", body = crate::sellers::Seller),
        (status = 400, description = "A missing name, or an invalid field", body = ApiError,
         example = json!({"error": "bad_request", "message": "name (or nome) is required", "field": "name"})),
        (status = 409, description = "The contact or Kommo user already belongs to a seller", body = ApiError,
         example = json!({"error": "conflict", "message": "contact_id 99999 already belongs to seller custom-1", "field": "contact_id"})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
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

/// A WhatsApp to attach to a Kommo-synced seller: `contact_id` and/or `phone`.
#[derive(Deserialize, ToSchema)]
#[schema(example = json!({"contact_id": 99999, "phone": "+55 11 98765-4321"}))]
pub struct AttachWhatsApp {
    /// The seller's own WhatsApp contact in Kommo.
    #[serde(default)]
    contact_id: Option<KommoId>,
    /// The seller's phone (any formatting; kept as digits).
    #[serde(default, alias = "telefone")]
    #[schema(value_type = Option<PhoneText>)]
    phone: Option<Text>,
}

/// Attach a WhatsApp to a Kommo seller
///
/// Lets a Kommo-synced seller (`kommo-<user id>`) use WhatsApp commands (`/assumir 12345`):
/// their own WhatsApp contact id and/or phone, kept across syncs and restarts. The same can be
/// configured with `SELLER_WHATSAPP`.
#[utoipa::path(
    post,
    path = "/vendedores/{id}/whatsapp",
    tag = "sellers",
    params(("id" = String, Path, pattern = "^kommo-", description = "The seller id, `kommo-<user id>` (only Kommo-synced sellers)", example = "kommo-10004026")),
    request_body = AttachWhatsApp,
    responses(
        (status = 200, description = "The seller, with the WhatsApp attached", body = crate::sellers::Seller),
        (status = 400, description = "Neither `contact_id` nor `phone`, a bad phone, or not a Kommo-synced seller", body = ApiError,
         example = json!({"error": "bad_request", "message": "contact_id: give contact_id and/or phone", "field": "contact_id"})),
        (status = 404, description = "No such seller", body = ApiError,
         example = json!({"error": "not_found", "message": "seller \"kommo-1\" not found"})),
        (status = 409, description = "The contact or phone belongs to another seller", body = ApiError,
         example = json!({"error": "conflict", "message": "contact_id 99999 already belongs to seller custom-1", "field": "contact_id"})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn attach_whatsapp(
    State(dir): State<Arc<SellerDirectory>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AttachWhatsApp>,
) -> Result<Json<Seller>, ApiError> {
    let whatsapp = crate::sellers::WhatsApp {
        contact_id: body.contact_id.map(|c| c.0),
        phone: body.phone.map(|p| p.0),
    };
    Ok(Json(dir.attach_whatsapp(id.trim(), whatsapp).await?))
}

/// Sync Kommo users
///
/// Re-reads the Kommo users now (the previous list stays in use if Kommo fails).
#[utoipa::path(
    post,
    path = "/vendedores/sincronizar",
    tag = "sellers",
    responses(
        (status = 200, description = "How many real sellers there are now", body = Synced),
        (status = 503, description = "Kommo is not configured or cannot be reached", body = ApiError,
         examples(
            ("kommo_not_configured" = (value = json!({"error": "kommo_not_configured", "message": "Kommo is not configured: real sellers and lead owners cannot be read"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: users: timed out"}))),
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
         )),
    ),
)]
async fn sync(State(dir): State<Arc<SellerDirectory>>) -> Result<Json<Synced>, ApiError> {
    let synced = dir.sync().await? as u64;
    Ok(Json(Synced { synced }))
}

/// Seller of a talk
///
/// Who is responsible, in this order: the seller holding the contact's conversation (or who
/// opened it proactively), then the contact's assignment or its responsible Kommo user, then
/// the lead's responsible Kommo user (`found_by`: `conversation`, `contact`, `lead`). No seller
/// found: 404; a step that needed Kommo could not ask it and nothing was found: 503.
#[utoipa::path(
    get,
    path = "/vendedor/conversa/{talk_id}",
    tag = "sellers",
    params(("talk_id" = String, Path, pattern = r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$", description = "A Kommo talk id (1 to 15 digits)", example = "109")),
    responses(
        (status = 200, description = "The responsible seller", body = ResponsibleAnswer),
        (status = 400, description = "The id is not a positive integer", body = ApiError,
         example = json!({"error": "bad_request", "message": "talk_id must be a positive integer", "field": "talk_id"})),
        (status = 404, description = "No seller found", body = ApiError,
         example = json!({"error": "not_found", "message": "talk 109 not found in Kommo"})),
        (status = 503, description = "The store or Kommo cannot be reached (or Kommo is needed and not configured)",
         body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_not_configured" = (value = json!({"error": "kommo_not_configured", "message": "Kommo is not configured: real sellers and lead owners cannot be read"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: lead: timed out"}))),
         )),
    ),
)]
async fn for_talk(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<ResponsibleAnswer>, ApiError> {
    let id = path_id("talk_id", &raw)?;
    Ok(Json(responsibility::for_talk(&app, id).await?.into()))
}

/// Seller of a contact
///
/// Who is responsible, in this order: the seller holding the contact's conversation (or who
/// opened it proactively), then the contact's assignment or its responsible Kommo user, then
/// the lead's responsible Kommo user (`found_by`: `conversation`, `contact`, `lead`). No seller
/// found: 404; a step that needed Kommo could not ask it and nothing was found: 503.
#[utoipa::path(
    get,
    path = "/vendedor/contato/{contact_id}",
    tag = "sellers",
    params(("contact_id" = String, Path, pattern = r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$", description = "A customer's Kommo contact id (1 to 15 digits)", example = "1298200")),
    responses(
        (status = 200, description = "The responsible seller", body = ResponsibleAnswer),
        (status = 400, description = "The id is not a positive integer", body = ApiError,
         example = json!({"error": "bad_request", "message": "contact_id must be a positive integer", "field": "contact_id"})),
        (status = 404, description = "No seller found", body = ApiError,
         example = json!({"error": "not_found", "message": "no seller found for contact 1298200"})),
        (status = 503, description = "The store or Kommo cannot be reached (or Kommo is needed and not configured)",
         body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_not_configured" = (value = json!({"error": "kommo_not_configured", "message": "Kommo is not configured: real sellers and lead owners cannot be read"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: lead: timed out"}))),
         )),
    ),
)]
async fn for_contact(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<ResponsibleAnswer>, ApiError> {
    let id = path_id("contact_id", &raw)?;
    Ok(Json(responsibility::for_contact(&app, id).await?.into()))
}

/// Seller of a lead
///
/// Who is responsible, in this order: the seller holding the contact's conversation (or who
/// opened it proactively), then the contact's assignment or its responsible Kommo user, then
/// the lead's responsible Kommo user (`found_by`: `conversation`, `contact`, `lead`). No seller
/// found: 404; a step that needed Kommo could not ask it and nothing was found: 503.
#[utoipa::path(
    get,
    path = "/vendedor/lead/{lead_id}",
    tag = "sellers",
    params(("lead_id" = String, Path, pattern = r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$", description = "A Kommo lead id (1 to 15 digits)", example = "878244")),
    responses(
        (status = 200, description = "The responsible seller", body = ResponsibleAnswer),
        (status = 400, description = "The id is not a positive integer", body = ApiError,
         example = json!({"error": "bad_request", "message": "lead_id must be a positive integer", "field": "lead_id"})),
        (status = 404, description = "No seller found", body = ApiError,
         example = json!({"error": "not_found", "message": "no seller found for lead 878244"})),
        (status = 503, description = "The store or Kommo cannot be reached (or Kommo is needed and not configured)",
         body = ApiError, examples(
            ("store_unavailable" = (value = json!({"error": "store_unavailable", "message": "store unavailable: connection refused"}))),
            ("kommo_not_configured" = (value = json!({"error": "kommo_not_configured", "message": "Kommo is not configured: real sellers and lead owners cannot be read"}))),
            ("kommo_unavailable" = (value = json!({"error": "kommo_unavailable", "message": "Kommo unavailable: lead: timed out"}))),
         )),
    ),
)]
async fn for_lead(
    State(app): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<ResponsibleAnswer>, ApiError> {
    let id = path_id("lead_id", &raw)?;
    Ok(Json(responsibility::for_lead(&app, id).await?.into()))
}
