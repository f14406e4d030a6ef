//! `/dead-letters`: what conversa received or owed and could not act on (see
//! [`crate::dead_letters`]) — listed newest first, replayed, or dropped
//! ([`crate::flows::dead_letters`]).

use crate::http::QueryParams;
use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dead_letters::DeadLetter;
use crate::error::ApiError;
use crate::flows::dead_letters as flow;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(replay))
        .routes(routes!(drop))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Only this kind (`webhook_item`, `dispatch_message`, `deliver_reply`, `add_note`…).
    kind: Option<String>,
    /// Only this contact's (effects).
    #[param(inline)]
    contact_id: Option<crate::http::Count>,
    /// Only those at least this many minutes old.
    #[param(inline)]
    min_age_minutes: Option<crate::http::Count>,
    /// Only those at most this many minutes old.
    #[param(inline)]
    max_age_minutes: Option<crate::http::Count>,
    /// At most this many (default 100, at most 500).
    #[param(inline)]
    limit: Option<crate::http::Count>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadLetterList {
    pub count: usize,
    /// Newest first.
    pub dead_letters: Vec<DeadLetter>,
}

/// A dead letter run again.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"replayed": "33981183-1298200-4",
    "replayed_as": "33981183-1298200-9", "contact_id": 1298200}))]
pub struct ReplayAnswer {
    pub replayed: String,
    /// Its new outbox id (a dispatch's new `dispatch_id`, the idempotency key n8n sees).
    pub replayed_as: String,
    pub contact_id: u64,
}

/// A dead letter given up on.
#[derive(Serialize, ToSchema)]
pub struct DropAnswer {
    pub dropped: DeadLetter,
}

/// The longest dead-letter id accepted.
const MAX_ID_BYTES: usize = 128;

fn dead_letter_id(raw: &str) -> Result<&str, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_ID_BYTES
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::bad_field(
            "id",
            "id must be a dead letter's id as GET /dead-letters lists it (letters, digits and '-', at most 128)",
        ))
    }
}

/// Dead letters
///
/// Webhook items that could not be read (the rest of their body was applied) and effects
/// given up on (n8n dispatches, replies, notes whose retries ran out), newest first.
#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "conversations",
    params(Filter),
    responses(
        (status = 200, description = "The records kept (the newest 500)", body = DeadLetterList),
        (status = 400, description = "A number that is not a whole number", body = ApiError,
         example = json!({"error": "bad_request", "field": "limit", "message": "limit: must be a whole number, got \"abc\""})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn list(
    State(app): State<AppState>,
    QueryParams(filter): QueryParams<Filter>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let limit = filter
        .limit
        .map_or(100, |c| c.0)
        .min(crate::dead_letters::KEPT);
    let now = conversa_actors::clock::now_millis();
    let age_minutes = |d: &DeadLetter| now.saturating_sub(d.at) / 60_000;
    let dead_letters: Vec<DeadLetter> = app
        .0
        .dead_letters
        .list()
        .await?
        .into_iter()
        .rev()
        .filter(|d| filter.kind.as_deref().is_none_or(|k| d.kind == k))
        .filter(|d| {
            filter
                .contact_id
                .is_none_or(|c| d.contact_id == Some(c.0 as u64))
        })
        .filter(|d| {
            filter
                .min_age_minutes
                .is_none_or(|m| age_minutes(d) >= m.0 as u64)
        })
        .filter(|d| {
            filter
                .max_age_minutes
                .is_none_or(|m| age_minutes(d) <= m.0 as u64)
        })
        .take(limit)
        .collect();
    Ok(Json(DeadLetterList {
        count: dead_letters.len(),
        dead_letters,
    }))
}

/// Replay a dead letter
///
/// Runs a dead-lettered effect again under a new id (a new idempotency key for n8n and
/// Kommo), once. Its conversation fences it like any effect: nothing the bot says goes into a
/// conversation a seller holds or that is paused (409), a reply from before a change of hands
/// stays unsent (409), and a dispatch carries the customer's messages unanswered now.
#[utoipa::path(
    post,
    path = "/dead-letters/{id}/replay",
    tag = "conversations",
    params(("id" = String, Path, description = "The dead letter's id, as listed", example = "33981183-1298200-4")),
    responses(
        (status = 200, description = "Queued again", body = ReplayAnswer),
        (status = 400, description = "Not a dead letter id", body = ApiError),
        (status = 404, description = "Not kept (replayed or dropped already)", body = ApiError,
         example = json!({"error": "not_found", "message": "no dead letter \"33981183-1298200-4\" is kept: replayed or dropped already, pushed out by newer ones, or never there"})),
        (status = 409, description = "Its conversation refuses it now", body = ApiError,
         example = json!({"error": "held_by_seller", "message": "Ana Souza (custom-1) holds the conversation: nothing the bot says is replayed into it; release it first or drop the dead letter",
             "holder": {"id": "custom-1", "name": "Ana Souza"}})),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn replay(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ReplayAnswer>, ApiError> {
    let id = dead_letter_id(&id)?;
    let done = flow::replay(&app, id, "operator via api").await?;
    Ok(Json(ReplayAnswer {
        replayed: done.id,
        replayed_as: done.replayed_as,
        contact_id: done.contact_id,
    }))
}

/// Drop a dead letter
///
/// Gives up on it for good: it leaves the list (and its conversation).
#[utoipa::path(
    delete,
    path = "/dead-letters/{id}",
    tag = "conversations",
    params(("id" = String, Path, description = "The dead letter's id, as listed", example = "33981183-1298200-4")),
    responses(
        (status = 200, description = "Dropped", body = DropAnswer),
        (status = 400, description = "Not a dead letter id", body = ApiError),
        (status = 404, description = "Not kept", body = ApiError),
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn drop(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DropAnswer>, ApiError> {
    let id = dead_letter_id(&id)?;
    let dropped = flow::drop(&app, id, "operator via api").await?;
    Ok(Json(DropAnswer { dropped }))
}
