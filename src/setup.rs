//! Start-up wiring from the configuration: the store backend (Redis when `REDIS_URL` is set,
//! else the embedded one) and the Kommo connection (the token manager — tokens live in the store;
//! the environment only seeds them — and the rate-limited client). Only [`crate::server`] uses
//! it, so the modules it builds never depend on the configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use conversa_actors::store::{Store, StoreError};
use tracing::{info, warn};

use crate::config::Config;
use crate::kommo::client::{KommoClient, KommoSettings, http_client};
use crate::kommo::oauth::{OAuthSettings, TokenManager, TokenState, Tokens};
use crate::store::{embedded, redis};

/// The client for `KOMMO_API_URL`, or `None` when Kommo is not configured.
pub async fn connect_kommo(
    config: &Config,
    store: Arc<dyn Store>,
) -> anyhow::Result<Option<Arc<KommoClient>>> {
    let Some(api_url) = config
        .kommo_api_url
        .as_deref()
        .filter(|u| !u.trim().is_empty())
    else {
        return Ok(None);
    };
    let parsed = reqwest::Url::parse(api_url).context("KOMMO_API_URL must be a URL")?;
    let host = parsed
        .host_str()
        .context("KOMMO_API_URL has no host")?
        .to_owned();
    let base_url = format!("{}://{}", parsed.scheme(), parsed.authority());
    let seed = config
        .kommo_access_token
        .clone()
        .filter(|t| !t.is_empty())
        .map(|access_token| Tokens {
            access_token,
            refresh_token: config.kommo_refresh_token.clone().filter(|t| !t.is_empty()),
            expires_at: None,
        });
    let http = http_client();
    let tokens = TokenManager::new(
        store,
        http,
        OAuthSettings {
            client_id: config.kommo_client_id.clone().unwrap_or_default(),
            client_secret: config.kommo_client_secret.clone().unwrap_or_default(),
            redirect_uri: config.kommo_redirect_uri.clone().unwrap_or_default(),
            base_url,
            account_key: format!("kommo:tokens:{host}"),
            seed,
        },
    );
    match tokens.load().await {
        Ok(TokenState::ReauthorizeNeeded { reason }) => {
            warn!(%reason, "Kommo needs a new authorization: open /oauth/authorize")
        }
        Ok(state) => info!(?state, "Kommo tokens loaded"),
        Err(e) => warn!(error = %e, "Kommo tokens could not be loaded yet"),
    }
    let mut settings = KommoSettings::new(api_url);
    settings.max_rps = config.kommo_max_rps;
    settings.max_concurrency = config.kommo_max_concurrency.max(1);
    settings.timeout = Duration::from_secs(config.effect_timeout_secs.clamp(1, 30));
    let client = KommoClient::new(settings, tokens).context("KOMMO_API_URL")?;
    Ok(Some(Arc::new(client)))
}

/// Opens the configured backend: Redis when `REDIS_URL` or `REDIS_CLUSTER_URLS` is set, else
/// the embedded store.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match config.redis_topology() {
        Some(topology) => {
            let timeout = Duration::from_millis(config.redis_timeout_ms.max(1));
            let settings = redis::RedisSettings {
                connect_timeout: timeout,
                response_timeout: timeout,
                wait_replicas: config.redis_wait_replicas,
                ..redis::RedisSettings::default()
            };
            Ok(Arc::new(
                redis::RedisStore::connect_to(&topology, settings).await?,
            ))
        }
        None => {
            let dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&dir))
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))??;
            Ok(Arc::new(store))
        }
    }
}
