//! Start-up and shutdown: logging, the store, the engine, the listener.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use conversa_actors::{Engine, Executors};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::app::{AppState, app};
use crate::config::{Config, LogFormat};
use crate::http::layers::Limits;
use crate::kommo::client::KommoClient;
use crate::n8n::{N8nClient, N8nSettings};
use crate::reply::{Channel, LeadNotes, ReplyChannel, Strategy};
use crate::reply_token::ReplyTokens;
use crate::sellers::{DirectorySettings, LeadSource, SellerDirectory, UserSource};
use crate::serve::ConnectionLimits;

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Logging for a subcommand: warnings and errors only, plain text on stderr (stdout is the
/// subcommand's answer).
pub fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the service until SIGINT/SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    config.check_exposure()?;
    config.check_consistency()?;
    let store =
        crate::setup::open_store(&config)
            .await
            .with_context(|| match config.redis_topology() {
                Some(topology) => {
                    use crate::store::redis::RedisTopology;
                    let setting = match topology {
                        RedisTopology::Single(_) => "REDIS_URL",
                        RedisTopology::Cluster(_) => "REDIS_CLUSTER_URLS",
                        RedisTopology::Sentinel { .. } => "REDIS_SENTINEL_URLS",
                    };
                    format!("cannot reach Redis at {} ({setting})", topology.addresses())
                }
                None => format!(
                    "cannot open the embedded store in {}",
                    config.data_dir.display()
                ),
            })?;
    // Before anything is written: a store that cannot take saves as configured (a Cluster
    // down, fewer replicas than REDIS_WAIT_REPLICAS) stops the start-up with its reason.
    store.ping().await.context("the store cannot take saves")?;
    let backend = store.backend();
    let reply_tokens = ReplyTokens::load_or_create(store.as_ref())
        .await
        .context("reading the reply-token key from the store")?;
    let kommo = crate::setup::connect_kommo(&config, store.clone()).await?;
    let executors = executors(&config, kommo.as_ref(), &reply_tokens)?;
    let n8n = match &config.n8n_webhook_url {
        Some(url) => format!("dispatching to {}", crate::redact::url(url)),
        None => "not configured (N8N_WEBHOOK_URL): dispatches wait in the outbox".to_owned(),
    };
    let engine = Engine::start(store, executors, config.engine())
        .await
        .context("engine start")?;
    let users = kommo.clone().map(|k| k as Arc<dyn UserSource>);
    let leads = kommo.clone().map(|k| k as Arc<dyn LeadSource>);
    let sellers = Arc::new(SellerDirectory::new(
        engine.store().clone(),
        users,
        leads,
        DirectorySettings {
            ttl: Duration::from_secs(config.sellers_ttl_secs.max(1)),
            fictitious: config.fictitious()?,
            real_whatsapp: config.seller_whatsapp()?,
            ..DirectorySettings::default()
        },
    ));
    let kommo_state = match (&kommo, config.reply_strategy()) {
        (Some(k), Some(channel)) => format!(
            "{:?}, replies via {}",
            k.tokens().state(),
            channel.as_str()
        ),
        _ => "not configured (KOMMO_API_URL): replies are reported undeliverable and wait in the outbox".to_owned(),
    };
    let open_routes = config.unauthenticated_public_routes();
    let webhook_watch = kommo.clone().and_then(|k| {
        crate::golive::watchdog::WebhookWatch::new(
            crate::golive::Target::from_config(&config),
            k,
            Duration::from_secs(config.webhook_watch_secs),
        )
    });
    if let Some(watch) = &webhook_watch {
        watch.spawn();
    }
    let gap_watch = kommo.clone().and_then(|k| {
        crate::gaps::GapWatch::new(
            engine.clone(),
            sellers.clone(),
            k,
            config.kommo_account_id,
            crate::gaps::GapSettings {
                interval: Duration::from_secs(config.gap_check_secs),
                grace: Duration::from_secs(config.gap_grace_secs),
                lookback: Duration::from_secs(config.gap_lookback_minutes.saturating_mul(60)),
            },
        )
    });
    if let Some(watch) = &gap_watch {
        watch.spawn();
    }
    let state = AppState::new(engine.clone(), &config, sellers)
        .with_kommo(kommo)
        .with_reply_tokens(reply_tokens)
        .with_webhook_watch(webhook_watch)
        .with_gap_watch(gap_watch);
    crate::dead_letters::follow(&engine, state.0.dead_letters.clone());
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    info!(
        %addr,
        store = backend,
        debounce_ms = config.debounce_ms,
        human_lease_minutes = config.human_lease_minutes,
        n8n = %n8n,
        kommo = %kommo_state,
        unauthenticated = ?open_routes,
        "conversa listening"
    );
    if !open_routes.is_empty() {
        warn!(routes = ?open_routes, "API_KEY is set but these public routes take no credential");
    }
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        request_timeout: Duration::from_millis(config.request_timeout_ms.max(1)),
    };
    let connections = ConnectionLimits {
        max_connections: crate::serve::fit_open_files(config.max_connections),
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs.max(1)),
        drain: Duration::from_secs(10),
    };
    crate::serve::serve(listener, app(state, limits), connections, shutdown_signal()).await;
    info!("stopping: letting running effects report back");
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// The effect executors the configuration provides; the others leave effects in the outbox.
fn executors(
    config: &Config,
    kommo: Option<&Arc<KommoClient>>,
    reply_tokens: &ReplyTokens,
) -> anyhow::Result<Executors> {
    let mut executors = Executors::default();
    if let Some(kommo) = kommo {
        let channel = match (
            config.reply_strategy(),
            config.kommo_reply_field_id,
            config.kommo_reply_bot_id,
        ) {
            (Some(Strategy::Salesbot), Some(field), Some(bot)) => Channel::Salesbot { field, bot },
            _ => Channel::Note,
        };
        executors.reply = Some(Arc::new(ReplyChannel::new(kommo.clone(), channel)));
        executors.note = Some(Arc::new(LeadNotes::new(
            kommo.clone(),
            config.note_language,
            config.note_time_zone.clone(),
        )));
    }
    if let Some(url) = &config.n8n_webhook_url {
        let client = N8nClient::new(N8nSettings {
            webhook_url: url.clone(),
            shared_secret: config.n8n_shared_secret.clone(),
            public_url: config.public_url.clone(),
            reply_tokens: reply_tokens.clone(),
            timeout: Duration::from_secs(config.effect_timeout_secs.max(1)),
            max_concurrency: config.n8n_max_concurrency.max(1),
            max_body_bytes: config.max_dispatch_bytes,
        })
        .context("N8N_WEBHOOK_URL")?;
        executors.dispatch = Some(Arc::new(client));
    }
    Ok(executors)
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
