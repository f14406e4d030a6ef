//! Liveness, version and the operator's statistics.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use conversa_actors::PhaseName;
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::kommo::N8nCheck;
use crate::openapi::schemas::TokenState;

/// Upper bound of contacts read from the phase index for `/stats`.
const STATS_SCAN_LIMIT: usize = 1_000_000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(version))
        .routes(routes!(stats))
}

/// `GET /health`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "uptime_seconds": 3600,
    "kommo": {"state": "not_configured"}}))]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    pub uptime_seconds: u64,
    /// The Kommo token state (`reauthorize_needed` when a human must re-authorise).
    pub kommo: TokenState,
}

/// `GET /ready`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"ready": true,
    "store": {"status": "ok", "backend": "embedded", "latency_ms": 0.05},
    "kommo": {"state": "not_configured"},
    "n8n": {"configured": false, "ok": false},
    "configured": {"store": "embedded", "api_key": true, "webhook_secret": true,
        "n8n_callback_token": true, "n8n_shared_secret": false, "kommo_account_id": 0,
        "kommo_subdomain": null, "kommo_api_url": null, "n8n_webhook_url": null,
        "public_url": null, "reply_channel": "not configured", "debounce_ms": 3000,
        "human_lease_minutes": 30.0}}))]
pub struct Ready {
    /// Whether the store answers (else the status is 503).
    pub ready: bool,
    pub store: StoreCheck,
    pub kommo: TokenState,
    pub n8n: N8nCheck,
    /// What is configured (secrets reduced to whether they are set).
    #[schema(value_type = Object)]
    pub configured: Value,
}

/// The store's reachability.
#[derive(Serialize, ToSchema)]
pub struct StoreCheck {
    /// `ok` or `unavailable`.
    #[schema(example = "ok")]
    pub status: String,
    /// `redis` or `embedded`.
    #[schema(example = "redis")]
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// `GET /version`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"name": "conversa", "version": "0.1.0", "git_commit": "606e0fe1a2b3",
    "build_time_unix": 1767225600}))]
pub struct Version {
    pub name: String,
    pub version: String,
    pub git_commit: String,
    pub build_time_unix: u64,
}

/// `GET /stats`.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"contacts": 3,
    "contacts_by_phase": {"idle": 0, "proactive": 0, "bot_active": 2, "paused": 1,
        "human_assigned": 0, "scheduling": 0},
    "active_actors": 2, "activations": 3, "passivations": 1, "restarts": 0,
    "store_backend": "embedded", "uptime_seconds": 3600, "outbox_pending_contacts": 0,
    "effects": {"executed": 10, "retried": 1, "failed": 0, "running": 0,
        "success_rate": 0.909},
    "engine": {}}))]
pub struct Stats {
    /// Contacts with a stored conversation.
    pub contacts: u64,
    /// Contacts per phase (every phase is listed).
    #[schema(value_type = std::collections::BTreeMap<String, u64>)]
    pub contacts_by_phase: Value,
    pub active_actors: u64,
    pub activations: u64,
    pub passivations: u64,
    pub restarts: u64,
    pub store_backend: String,
    pub uptime_seconds: u64,
    /// Contacts with effects waiting in the outbox (e.g. no executor configured).
    pub outbox_pending_contacts: u64,
    pub effects: EffectStats,
    /// The engine's raw counters.
    #[schema(value_type = Object)]
    pub engine: Value,
}

#[derive(Serialize, ToSchema)]
pub struct EffectStats {
    pub executed: u64,
    pub retried: u64,
    pub failed: u64,
    pub running: u64,
    /// `executed / (executed + failed + retried)`; `null` before any effect ran.
    pub success_rate: Option<f64>,
}

/// Liveness
///
/// The process is up and serving; also says whether Kommo needs a new authorisation.
#[utoipa::path(
    get,
    path = "/health",
    tag = "probes",
    responses((status = 200, description = "Up", body = Health)),
)]
async fn health(State(app): State<AppState>) -> Json<Value> {
    let kommo = match app.kommo() {
        Some(k) => json!(k.tokens().state()),
        None => json!({"state": "not_configured"}),
    };
    Json(json!({
        "status": "ok",
        "uptime_seconds": app.0.started.elapsed().as_secs(),
        "kommo": kommo,
    }))
}

/// Readiness
///
/// Ready to serve: the store answers. Also says what is configured and what is not, the Kommo
/// token state and whether n8n answers.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "probes",
    responses(
        (status = 200, description = "The store answers", body = Ready),
        (status = 503, description = "The store cannot be reached (same shape, `ready: false`)",
         body = Ready, example = json!({"ready": false,
            "store": {"status": "unavailable", "backend": "redis",
                "error": "store unavailable: connection refused"},
            "kommo": {"state": "not_configured"}, "n8n": {"configured": false, "ok": false},
            "configured": {"store": "redis"}})),
    ),
)]
async fn ready(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let started = std::time::Instant::now();
    let store = app.engine().store().ping().await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, store_json) = match store {
        Ok(()) => (
            StatusCode::OK,
            json!({"status": "ok", "backend": app.engine().store().backend(), "latency_ms": latency_ms}),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "backend": app.engine().store().backend(), "error": e.to_string()}),
        ),
    };
    let kommo = match app.kommo() {
        Some(k) => json!(k.tokens().state()),
        None => json!({"state": "not_configured"}),
    };
    let body = json!({
        "ready": status == StatusCode::OK,
        "store": store_json,
        "kommo": kommo,
        "n8n": crate::http::kommo::n8n_check(&app).await,
        "configured": app.0.configured,
    });
    (status, Json(body))
}

/// Version
///
/// Crate version, git commit and build time.
#[utoipa::path(
    get,
    path = "/version",
    tag = "probes",
    responses((status = 200, description = "The build", body = Version)),
)]
async fn version() -> Json<Value> {
    Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("CONVERSA_GIT_COMMIT"),
        "build_time_unix": env!("CONVERSA_BUILD_UNIX").parse::<u64>().unwrap_or(0),
    }))
}

/// Statistics
///
/// Conversations by phase, the engine's counters (actors, activations, passivations), effects
/// success rate, pending outbox and uptime.
#[utoipa::path(
    get,
    path = "/stats",
    tag = "probes",
    responses(
        (status = 200, description = "Statistics", body = Stats),
        (status = 503, response = crate::openapi::StoreUnavailable),
    ),
)]
async fn stats(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = app.engine();
    let store = engine.store();
    let phases = store.phases(STATS_SCAN_LIMIT).await?;
    let mut by_phase: BTreeMap<&str, u64> =
        PhaseName::ALL.iter().map(|p| (p.as_str(), 0)).collect();
    for (_, phase) in &phases {
        if let Some(n) = by_phase.get_mut(phase.as_str()) {
            *n += 1;
        }
    }
    let pending = store.pending_outbox_count().await?;
    let stats = engine.stats();
    let done = stats.effects_executed;
    let tried = done + stats.effects_failed + stats.effects_retried;
    Ok(Json(json!({
        "contacts": phases.len(),
        "contacts_by_phase": by_phase,
        "active_actors": stats.active_actors,
        "activations": stats.activations,
        "passivations": stats.passivations,
        "restarts": stats.restarts,
        "store_backend": stats.store_backend,
        "uptime_seconds": app.0.started.elapsed().as_secs(),
        "outbox_pending_contacts": pending,
        "effects": {
            "executed": done,
            "retried": stats.effects_retried,
            "failed": stats.effects_failed,
            "running": stats.effects_running,
            "success_rate": if tried == 0 { Value::Null } else { json!(done as f64 / tried as f64) },
        },
        "engine": stats,
    })))
}
