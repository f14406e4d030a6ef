//! The store backends behind [`conversa_actors::store::Store`]: embedded (redb, the default when
//! no Redis is configured, so `cargo run` needs nothing installed) and Redis (production and
//! several engine nodes). The in-memory backend lives in the actors crate, for tests.

pub mod embedded;
pub mod redis;

pub use conversa_actors::store::{IndexUpdate, MemoryStore, Store, StoreError, StoredSnapshot};

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// Opens the configured backend: Redis when `REDIS_URL` is set, else the embedded store.
pub async fn open(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    match &config.redis_url {
        Some(url) => {
            let timeout = Duration::from_millis(config.redis_timeout_ms.max(1));
            let settings = redis::RedisSettings {
                connect_timeout: timeout,
                response_timeout: timeout,
                ..redis::RedisSettings::default()
            };
            Ok(Arc::new(redis::RedisStore::connect(url, settings).await?))
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
