//! `GET /dead-letters`: what conversa received and could not act on (see
//! [`crate::dead_letters`]), newest first.

use crate::http::QueryParams;
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dead_letters::DeadLetter;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct Filter {
    /// Only this kind (`webhook_item`).
    kind: Option<String>,
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

/// Dead letters
///
/// Webhook items that could not be read (the rest of their body was applied), newest first.
#[utoipa::path(
    get,
    path = "/dead-letters",
    tag = "conversations",
    params(Filter),
    responses(
        (status = 200, description = "The records kept (the newest 500)", body = DeadLetterList),
        (status = 400, description = "A `limit` that is not a whole number", body = ApiError,
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
    let dead_letters: Vec<DeadLetter> = app
        .0
        .dead_letters
        .list()
        .await?
        .into_iter()
        .rev()
        .filter(|d| filter.kind.as_deref().is_none_or(|k| d.kind == k))
        .take(limit)
        .collect();
    Ok(Json(DeadLetterList {
        count: dead_letters.len(),
        dead_letters,
    }))
}
