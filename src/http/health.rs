//! Liveness, version and the operator's statistics.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use conversa_actors::PhaseName;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Summary;
use crate::error::ApiError;
use crate::golive::Report;
use crate::golive::watchdog::WatchReport;
use crate::http::kommo::N8nCheck;
use crate::kommo::oauth::TokenState;
use crate::state::AppState;

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
    #[schema(value_type = String)]
    pub status: &'static str,
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
        "human_lease_minutes": 30.0, "unauthenticated_routes": []},
    "go_live": {"customers_answered": false, "checked_online_at": 1767225600,
        "checks": [{"name": "KOMMO_API_URL", "status": "fail",
            "detail": "unset: conversa cannot reach Kommo (replies wait in the outbox)",
            "fix": "set KOMMO_API_URL=https://<subdomain>.kommo.com/api/v4/"}]},
    "webhook_watch": {"interval_secs": 300, "checked_at": 1767225600, "state": "ok",
        "error": null, "repairs": 1, "last_repair": {"at": 1767225300, "was": "disabled",
        "ok": true, "detail": "re-enable https://conversa.example/webhooks/kommo/*** (Kommo disabled it): remove it and register it again: done"}},
    "gap_watch": {"interval_secs": 60, "grace_secs": 120, "checked_at": 1767225600,
        "checked_until": 1767225480, "state": "ok", "error": null, "kommo_requests": 61,
        "missed": 1, "last_missed": [{"contact_id": 1298200,
        "message_id": "1508b51c-0e0b-4b1c-9c1c-3b1f6f0b2a11", "at": 1767225120000u64}]}}))]
pub struct Ready {
    /// Whether the store answers (else the status is 503).
    pub ready: bool,
    pub store: StoreCheck,
    pub kommo: TokenState,
    pub n8n: N8nCheck,
    /// What is configured (secrets reduced to whether they are set).
    pub configured: Summary,
    /// Would a customer writing now be answered? The checks of `conversa check`: the settings
    /// at once, Kommo, n8n and `PUBLIC_URL` as last asked (at most once a minute, in the
    /// background).
    pub go_live: Report,
    /// The webhook watchdog (`WEBHOOK_WATCH_SECS`): how conversa's Kommo webhook stood at the
    /// last look and its repairs; `null` when nothing is watched (no Kommo, `PUBLIC_URL` or
    /// `WEBHOOK_SECRET`, or `WEBHOOK_WATCH_SECS=0`).
    pub webhook_watch: Option<WatchReport>,
    /// Gap detection (`GAP_CHECK_SECS`): up to when Kommo's events were read and the customer
    /// messages found that never reached conversa; `null` without Kommo or with
    /// `GAP_CHECK_SECS=0`.
    pub gap_watch: Option<crate::gaps::GapReport>,
}

/// The store's reachability.
#[derive(Serialize, ToSchema)]
pub struct StoreCheck {
    /// `ok` or `unavailable`.
    #[schema(value_type = String, example = "ok")]
    pub status: &'static str,
    /// `redis` or `embedded`.
    #[schema(value_type = String, example = "redis")]
    pub backend: &'static str,
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
    #[schema(value_type = String)]
    pub name: &'static str,
    #[schema(value_type = String)]
    pub version: &'static str,
    #[schema(value_type = String)]
    pub git_commit: &'static str,
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
    pub contacts_by_phase: BTreeMap<PhaseName, u64>,
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
    pub engine: conversa_actors::EngineStats,
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
async fn health(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        uptime_seconds: app.0.started.elapsed().as_secs(),
        kommo: token_state(&app),
    })
}

fn token_state(app: &AppState) -> TokenState {
    app.kommo()
        .map_or(TokenState::NotConfigured, |k| k.tokens().state())
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
            "configured": {"store": "redis", "api_key": true, "webhook_secret": true,
                "n8n_callback_token": true, "n8n_shared_secret": false, "kommo_account_id": 0,
                "kommo_subdomain": null, "kommo_api_url": null, "n8n_webhook_url": null,
                "public_url": null, "reply_channel": "not configured", "debounce_ms": 3000,
                "human_lease_minutes": 30.0, "unauthenticated_routes": []},
            "go_live": {"customers_answered": false, "checked_online_at": null,
                "checks": []}, "webhook_watch": null, "gap_watch": null})),
    ),
)]
async fn ready(State(app): State<AppState>) -> (StatusCode, Json<Ready>) {
    let started = std::time::Instant::now();
    let backend = app.engine().store().backend();
    let store = match app.engine().store().ping().await {
        Ok(()) => StoreCheck {
            status: "ok",
            backend,
            latency_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
            error: None,
        },
        Err(e) => StoreCheck {
            status: "unavailable",
            backend,
            latency_ms: None,
            error: Some(e.to_string()),
        },
    };
    let ready = store.error.is_none();
    let answer = Ready {
        ready,
        store,
        kommo: token_state(&app),
        n8n: crate::http::kommo::n8n_check(&app).await,
        configured: app.0.configured.clone(),
        go_live: app
            .0
            .go_live
            .current(app.kommo().cloned(), &app.0.http)
            .await,
        webhook_watch: app.0.webhook_watch.as_ref().map(|w| w.report()),
        gap_watch: app.0.gap_watch.as_ref().map(|w| w.report()),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(answer))
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
async fn version() -> Json<Version> {
    Json(Version {
        name: env!("CARGO_PKG_NAME"),
        version: env!("CARGO_PKG_VERSION"),
        git_commit: env!("CONVERSA_GIT_COMMIT"),
        build_time_unix: env!("CONVERSA_BUILD_UNIX").parse::<u64>().unwrap_or(0),
    })
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
        (status = 503, response = crate::error::StoreUnavailable),
    ),
)]
async fn stats(State(app): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let engine = app.engine();
    let store = engine.store();
    let phases = store.phases(STATS_SCAN_LIMIT).await?;
    let mut by_phase: BTreeMap<PhaseName, u64> = PhaseName::ALL.iter().map(|p| (*p, 0)).collect();
    for (_, phase) in &phases {
        if let Some(n) = by_phase.get_mut(phase) {
            *n += 1;
        }
    }
    let pending = store.pending_outbox_count().await?;
    let stats = engine.stats();
    let done = stats.effects_executed;
    let tried = done + stats.effects_failed + stats.effects_retried;
    Ok(Json(Stats {
        contacts: phases.len() as u64,
        contacts_by_phase: by_phase,
        active_actors: stats.active_actors as u64,
        activations: stats.activations,
        passivations: stats.passivations,
        restarts: stats.restarts,
        store_backend: stats.store_backend.to_string(),
        uptime_seconds: app.0.started.elapsed().as_secs(),
        outbox_pending_contacts: pending as u64,
        effects: EffectStats {
            executed: done,
            retried: stats.effects_retried,
            failed: stats.effects_failed,
            running: stats.effects_running as u64,
            success_rate: (tried > 0).then(|| done as f64 / tried as f64),
        },
        engine: stats,
    }))
}
