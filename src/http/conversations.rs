//! Reading conversations: one by contact id, the live ones, and a debugging listing.
//!
//! Reads go to the store, not to actors, so they are current on every node and never activate
//! an actor.

use crate::http::QueryParams;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::http::view::ConversationView;
use crate::state::AppState;
use conversa_actors::PhaseName;
use conversa_actors::SellerRef;
use conversa_actors::timeline::Entry as TimelineEntry;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(active))
        .routes(routes!(one))
        .routes(routes!(debug))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Listing {
    /// At most this many conversations (`/conversations/active`: default 1000, at most
    /// 100000; `/debug/conversations`: default 50, at most 1000).
    #[param(inline)]
    limit: Option<crate::http::Count>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Account {
    /// Another Kommo account than the configured one.
    account_id: Option<u64>,
}

/// `GET /conversations/active`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"count": 2, "conversations": [
    {"account_id": 0, "contact_id": 1298200, "phase": "bot_active"},
    {"account_id": 0, "contact_id": 12345, "phase": "paused"}]}))]
pub struct ActiveConversations {
    pub count: u64,
    pub conversations: Vec<ActiveConversation>,
}

#[derive(Serialize, ToSchema)]
pub struct ActiveConversation {
    pub account_id: u64,
    pub contact_id: u64,
    pub phase: PhaseName,
}

/// `GET /debug/conversations`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"node_id": "node-a1b2", "active_actors": 1, "count": 1,
    "conversations": [{"account_id": 0, "contact_id": 1298200, "phase": "bot_active",
        "seller": null, "version": 3, "epoch": 0, "pending_messages": 0, "outbox": 0,
        "timers": 0, "last": {"at": 1767225603000u64, "what": "dispatch_sent",
        "dispatch_id": "0-1298200-1"}}]}))]
pub struct DebugConversations {
    /// This engine node.
    pub node_id: String,
    pub active_actors: u64,
    pub count: u64,
    pub conversations: Vec<DebugConversation>,
}

#[derive(Serialize, ToSchema)]
pub struct DebugConversation {
    pub account_id: u64,
    pub contact_id: u64,
    pub phase: PhaseName,
    pub seller: Option<SellerRef>,
    pub version: u64,
    pub epoch: u64,
    /// How many customer messages wait for the debounce.
    pub pending_messages: u64,
    /// How many effects wait in the outbox.
    pub outbox: u64,
    /// How many timers are armed.
    pub timers: u64,
    /// The last timeline entry.
    pub last: Option<TimelineEntry>,
}

/// One conversation
///
/// The phase, the seller, the pending work and the timeline: each entry names the Kommo
/// message id or `dispatch_id` it concerns, and a dropped reply says why.
#[utoipa::path(
    get,
    path = "/conversations/{contact_id}",
    tag = "conversations",
    params(
        ("contact_id" = String, Path, pattern = r"^[ \t\n\r]*0*[1-9][0-9]{0,14}[ \t\n\r]*$", description = "The customer's Kommo contact id (1 to 15 digits)", example = "1298200"),
        Account,
    ),
    responses(
        (status = 200, description = "The conversation", body = ConversationView),
        (status = 400, description = "`contact_id` is not a positive integer", body = ApiError,
         example = json!({"error": "bad_request", "message": "contact_id must be a positive integer", "field": "contact_id"})),
        (status = 404, description = "No conversation for this contact", body = ApiError,
         example = json!({"error": "not_found", "message": "no conversation for contact 1298200"})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn one(
    State(app): State<AppState>,
    Path(contact_id): Path<String>,
    QueryParams(account): QueryParams<Account>,
) -> Result<Json<ConversationView>, ApiError> {
    let contact_id = crate::http::path_id("contact_id", &contact_id)?;
    let mut key = app.contact(contact_id);
    if let Some(account_id) = account.account_id {
        key.account_id = account_id;
    }
    let (conversation, version) =
        app.engine().conversation(&key).await?.ok_or_else(|| {
            ApiError::not_found(format!("no conversation for contact {contact_id}"))
        })?;
    Ok(Json(ConversationView::new(conversation, version)))
}

/// Live conversations
///
/// Conversations in any phase but `idle`.
#[utoipa::path(
    get,
    path = "/conversations/active",
    tag = "conversations",
    params(Listing),
    responses(
        (status = 200, description = "Live conversations", body = ActiveConversations),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn active(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<Listing>,
) -> Result<Json<ActiveConversations>, ApiError> {
    let limit = q.limit.map_or(1000, |c| c.0).min(100_000);
    let phases = app.engine().store().phases(usize::MAX).await?;
    let live: Vec<ActiveConversation> = phases
        .into_iter()
        .filter(|(_, p)| *p != PhaseName::Idle)
        .take(limit)
        .map(|(k, phase)| ActiveConversation {
            account_id: k.account_id,
            contact_id: k.contact_id,
            phase,
        })
        .collect();
    Ok(Json(ActiveConversations {
        count: live.len() as u64,
        conversations: live,
    }))
}

/// Debug listing
///
/// Stored conversations with their pending work, for debugging (bounded by `limit`).
#[utoipa::path(
    get,
    path = "/debug/conversations",
    tag = "conversations",
    params(Listing),
    responses(
        (status = 200, description = "Stored conversations", body = DebugConversations),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn debug(
    State(app): State<AppState>,
    QueryParams(q): QueryParams<Listing>,
) -> Result<Json<DebugConversations>, ApiError> {
    let limit = q.limit.map_or(50, |c| c.0).min(1000);
    let engine = app.engine();
    let mut items = Vec::new();
    for (key, _) in engine.store().phases(limit).await? {
        if let Some((c, version)) = engine.conversation(&key).await? {
            items.push(DebugConversation {
                account_id: key.account_id,
                contact_id: key.contact_id,
                phase: c.phase().kind(),
                seller: c.phase().seller().cloned(),
                version,
                epoch: c.epoch(),
                pending_messages: c.pending().len() as u64,
                outbox: c.outbox().len() as u64,
                timers: c.timers().len() as u64,
                last: c.timeline().last().cloned(),
            });
        }
    }
    Ok(Json(DebugConversations {
        node_id: engine.node_id().to_owned(),
        active_actors: engine.active_actors() as u64,
        count: items.len() as u64,
        conversations: items,
    }))
}
