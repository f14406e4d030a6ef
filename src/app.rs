//! The application: shared state and the router built from small handler modules.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use conversa_actors::{ContactKey, Engine};

use crate::http;

/// What every handler can reach. Cheap to clone (`Arc` inside).
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub engine: Engine,
    /// The Kommo account conversations belong to when a request does not say.
    pub account_id: u64,
    pub started: Instant,
}

impl AppState {
    pub fn new(engine: Engine, account_id: u64) -> Self {
        Self(Arc::new(Inner {
            engine,
            account_id,
            started: Instant::now(),
        }))
    }

    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub fn contact(&self, contact_id: u64) -> ContactKey {
        ContactKey::new(self.0.account_id, contact_id)
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(http::health::routes())
        .merge(http::conversations::routes())
        .merge(http::bot_control::routes())
        .fallback(http::not_found)
        .with_state(state)
}
