//! Reading conversations: one by contact id, the live ones, and a debugging listing.
//!
//! Reads go to the store, not to actors, so they are current on every node and never activate
//! an actor.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::view::ConversationView;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/conversations/active", get(active))
        .route("/conversations/{contact_id}", get(one))
        .route("/debug/conversations", get(debug))
}

#[derive(Deserialize)]
struct Listing {
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct Account {
    account_id: Option<u64>,
}

async fn one(
    State(app): State<AppState>,
    Path(contact_id): Path<String>,
    Query(account): Query<Account>,
) -> Result<Json<Value>, ApiError> {
    let contact_id: u64 = contact_id
        .parse()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_field("contact_id", "contact_id must be a positive integer")
        })?;
    let mut key = app.contact(contact_id);
    if let Some(account_id) = account.account_id {
        key.account_id = account_id;
    }
    let (conversation, version) =
        app.engine().conversation(&key).await?.ok_or_else(|| {
            ApiError::not_found(format!("no conversation for contact {contact_id}"))
        })?;
    Ok(Json(
        serde_json::to_value(ConversationView::new(&conversation, version)).unwrap_or_default(),
    ))
}

/// Conversations in any phase but `idle`.
async fn active(
    State(app): State<AppState>,
    Query(q): Query<Listing>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let phases = app.engine().store().phases(usize::MAX).await?;
    let live: Vec<Value> = phases
        .into_iter()
        .filter(|(_, p)| p != "idle")
        .take(limit)
        .map(|(k, p)| json!({"account_id": k.account_id, "contact_id": k.contact_id, "phase": p}))
        .collect();
    Ok(Json(json!({ "count": live.len(), "conversations": live })))
}

/// Stored conversations with their pending work, for debugging (bounded by `limit`).
async fn debug(
    State(app): State<AppState>,
    Query(q): Query<Listing>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).min(1000);
    let engine = app.engine();
    let mut items = Vec::new();
    for (key, _) in engine.store().phases(limit).await? {
        if let Some((c, version)) = engine.conversation(&key).await? {
            items.push(json!({
                "account_id": key.account_id,
                "contact_id": key.contact_id,
                "phase": c.phase.name(),
                "seller": c.phase.seller(),
                "version": version,
                "epoch": c.epoch,
                "pending_messages": c.pending.len(),
                "outbox": c.outbox.len(),
                "timers": c.timers.len(),
                "last": c.timeline.last(),
            }));
        }
    }
    Ok(Json(json!({
        "node_id": engine.node_id(),
        "active_actors": engine.active_actors(),
        "count": items.len(),
        "conversations": items,
    })))
}
