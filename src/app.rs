//! The application: the router built from the small handler modules of [`crate::http`],
//! wrapped in the shared middleware, and the OpenAPI document built from the same registrations.

use std::sync::LazyLock;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http;
use crate::openapi;
pub use crate::state::AppState;

/// The full application: routes wrapped in the shared middleware.
pub fn app(state: AppState, limits: http::layers::Limits) -> Router {
    http::layers::wrap(routes(), state, limits)
}

/// Every route, without middleware or state: the documented routes, `/docs` (Swagger UI) and
/// the JSON 404 fallback.
pub fn routes() -> Router<AppState> {
    let (router, _) = router_and_doc();
    router.merge(openapi::docs_ui()).fallback(http::not_found)
}

/// The routes and the OpenAPI document, from the same registrations: each module's
/// `routes()` is an `OpenApiRouter` whose `routes!(handler)` calls add the route and its
/// documented operation together, so the document lists exactly the routes the router has.
pub fn router_and_doc() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(openapi::base())
        .merge(http::health::routes())
        .merge(http::conversations::routes())
        .merge(http::dead_letters::routes())
        .merge(http::bot_control::routes())
        .merge(http::webhook::routes())
        .merge(http::send_response::routes())
        .merge(http::metrics::routes())
        .merge(http::sellers::routes())
        .merge(http::commands::routes())
        .merge(http::proactive::routes())
        .merge(http::scheduling::routes())
        .merge(http::kommo::routes())
        .routes(routes!(openapi_json))
        .split_for_parts();
    (router, openapi::finish(doc))
}

/// The full document: every route of the router, with security and the common responses.
pub fn openapi() -> utoipa::openapi::OpenApi {
    DOC.0.clone()
}

/// The document as served: the generated one with the [`openapi::request_rules`].
pub fn openapi_json_text() -> &'static str {
    DOC.1.as_str()
}

static DOC: LazyLock<(utoipa::openapi::OpenApi, String)> = LazyLock::new(|| {
    let (_, doc) = router_and_doc();
    let mut json = serde_json::to_value(&doc).expect("the OpenAPI document serializes");
    openapi::request_rules(&mut json);
    let text = serde_json::to_string_pretty(&json).expect("the OpenAPI document serializes");
    (doc, text)
});

/// The OpenAPI 3.1 document of this service (what `/docs` shows).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json",
         body = Object),
    )
)]
pub async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOC.1.as_str())
}
