//! Liveness, version and the operator's statistics.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use conversa_actors::Phase;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::ApiError;

/// Upper bound of contacts read from the phase index for `/stats`.
const STATS_SCAN_LIMIT: usize = 1_000_000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/version", get(version))
        .route("/stats", get(stats))
}

/// The process is up and serving; also says whether Kommo needs a new authorisation.
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

/// Ready to serve: the store answers. Also says what is configured and what is not.
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

async fn version() -> Json<Value> {
    Json(json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("CONVERSA_GIT_COMMIT"),
        "build_time_unix": env!("CONVERSA_BUILD_UNIX").parse::<u64>().unwrap_or(0),
    }))
}

/// Conversations by phase, the engine's counters, pending outbox and uptime.
async fn stats(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let engine = app.engine();
    let store = engine.store();
    let phases = store.phases(STATS_SCAN_LIMIT).await?;
    let mut by_phase: BTreeMap<&str, u64> = Phase::NAMES.iter().map(|p| (*p, 0)).collect();
    for (_, phase) in &phases {
        if let Some(n) = by_phase.get_mut(phase.as_str()) {
            *n += 1;
        }
    }
    let pending = store.pending_outbox(STATS_SCAN_LIMIT).await?.len();
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
