//! Start-up and shutdown: logging, the store, the engine, the listener.

use std::time::Duration;

use anyhow::Context;
use conversa_actors::{Engine, Executors};
use tokio::net::TcpListener;
use tracing::info;

use crate::app::{AppState, router};
use crate::config::{Config, LogFormat};

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let store = crate::store::open(&config)
        .await
        .with_context(|| match &config.redis_url {
            Some(_) => "cannot reach Redis (REDIS_URL)".to_owned(),
            None => format!(
                "cannot open the embedded store in {}",
                config.data_dir.display()
            ),
        })?;
    let backend = store.backend();
    let engine = Engine::start(store, Executors::default(), config.engine())
        .await
        .context("engine start")?;
    let state = AppState::new(engine.clone(), config.kommo_account_id);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    info!(
        %addr,
        store = backend,
        debounce_ms = config.debounce_ms,
        human_lease_minutes = config.human_lease_minutes,
        n8n = "not configured: dispatches wait in the outbox",
        kommo = "not configured: replies and notes wait in the outbox",
        "conversa listening"
    );
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    info!("stopping: letting running effects report back");
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
