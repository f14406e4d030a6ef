//! What every handler and use case can reach: the engine, the sellers directory, the Kommo
//! connection and the settings they act on ([`AppState`], cheap to clone).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::FromRef;
use conversa_actors::{ContactKey, Engine};

use crate::config::Config;
use crate::kommo::client::KommoClient;
use crate::sellers::SellerDirectory;
use crate::text::fold;

/// What every handler can reach. Cheap to clone (`Arc` inside).
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

#[derive(Clone)]
pub struct Inner {
    pub engine: Engine,
    /// The Kommo account conversations belong to (0 when not configured).
    pub account_id: u64,
    /// When set, webhooks from another subdomain are refused.
    pub kommo_subdomain: Option<String>,
    /// When set, the Kommo webhook URL must carry it.
    pub webhook_secret: Option<String>,
    /// When set, n8n's callback may carry it as a bearer token.
    pub callback_token: Option<String>,
    /// Otherwise n8n's callback must carry its dispatch's reply token.
    pub reply_tokens: crate::reply_token::ReplyTokens,
    /// When set, operator endpoints require it as a bearer token.
    pub api_key: Option<String>,
    /// What is configured and what is not (secrets left out), for `/ready` and the start-up log.
    pub configured: crate::config::Summary,
    /// The sellers: real (Kommo users), fictitious (configuration), custom (API).
    pub sellers: Arc<SellerDirectory>,
    /// Webhook items that could not be read, for an operator (`GET /dead-letters`).
    pub dead_letters: Arc<crate::dead_letters::DeadLetters>,
    /// `ELIGIBLE_AREAS`, folded (lowercase, no accents); empty = every area.
    pub eligible_areas: Vec<String>,
    /// The Kommo connection, when `KOMMO_API_URL` is set.
    pub kommo: Option<Arc<KommoClient>>,
    /// For reachability checks (n8n).
    pub http: reqwest::Client,
    /// The latest n8n probe and when it was made (`/ready` reuses it for a few seconds).
    pub n8n_probe: Arc<crate::n8n::ProbeCache>,
    pub n8n_webhook_url: Option<String>,
    /// The reply channel in use (`None` without Kommo: replies cannot be delivered).
    pub reply_channel: Option<crate::reply::Strategy>,
    /// How long `/send-response` waits for the reply channel before answering `queued`.
    pub reply_wait: std::time::Duration,
    /// Renders `/metrics` (installed by the server; absent in some tests).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    pub started: Instant,
    /// Would a customer be answered? The go-live checks `/ready` serves.
    pub go_live: Arc<crate::golive::checks::Watch>,
    /// The webhook watchdog, when Kommo, `PUBLIC_URL` and `WEBHOOK_SECRET` are configured.
    pub webhook_watch: Option<Arc<crate::golive::watchdog::WebhookWatch>>,
    /// Gap detection, when Kommo is configured and `GAP_CHECK_SECS` is not 0.
    pub gap_watch: Option<Arc<crate::gaps::GapWatch>>,
}

impl AppState {
    /// The state for `engine` with the settings of `config`.
    pub fn new(engine: Engine, config: &Config, sellers: Arc<SellerDirectory>) -> Self {
        Self(Arc::new(Inner {
            engine: engine.clone(),
            account_id: config.kommo_account_id,
            kommo_subdomain: config.kommo_subdomain.clone().filter(|s| !s.is_empty()),
            webhook_secret: config.webhook_secret.clone().filter(|s| !s.is_empty()),
            callback_token: config.n8n_callback_token.clone().filter(|s| !s.is_empty()),
            api_key: config.api_key.clone().filter(|s| !s.is_empty()),
            configured: config.summary(engine.store().backend()),
            metrics: crate::recorder::handle(),
            kommo: None,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()
                .unwrap_or_default(),
            n8n_webhook_url: config.n8n_webhook_url.clone(),
            n8n_probe: Arc::default(),
            reply_channel: config.reply_strategy(),
            reply_wait: std::time::Duration::from_millis(config.reply_wait_ms),
            sellers,
            dead_letters: Arc::new(crate::dead_letters::DeadLetters::new(
                engine.store().clone(),
            )),
            eligible_areas: config
                .eligible_areas
                .iter()
                .map(|a| fold(a))
                .filter(|a| !a.is_empty())
                .collect(),
            started: Instant::now(),
            go_live: crate::golive::checks::Watch::new(crate::golive::Target::from_config(config)),
            webhook_watch: None,
            gap_watch: None,
            reply_tokens: crate::reply_token::ReplyTokens::ephemeral(),
        }))
    }

    /// The same state with the webhook watchdog (`/ready` reports it).
    pub fn with_webhook_watch(
        self,
        watch: Option<Arc<crate::golive::watchdog::WebhookWatch>>,
    ) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
        inner.webhook_watch = watch;
        Self(Arc::new(inner))
    }

    /// The same state with gap detection (`/ready` reports it).
    pub fn with_gap_watch(self, watch: Option<Arc<crate::gaps::GapWatch>>) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
        inner.gap_watch = watch;
        Self(Arc::new(inner))
    }

    /// The same state with the store's reply-token key (tokens made by every node agree).
    pub fn with_reply_tokens(self, tokens: crate::reply_token::ReplyTokens) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
        inner.reply_tokens = tokens;
        Self(Arc::new(inner))
    }

    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub fn contact(&self, contact_id: u64) -> ContactKey {
        ContactKey::new(self.0.account_id, contact_id)
    }

    /// The same state with a Kommo connection.
    pub fn with_kommo(self, kommo: Option<Arc<KommoClient>>) -> Self {
        let mut inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
        inner.kommo = kommo;
        Self(Arc::new(inner))
    }

    pub fn kommo(&self) -> Option<&Arc<KommoClient>> {
        self.0.kommo.as_ref()
    }

    pub fn sellers(&self) -> &Arc<SellerDirectory> {
        &self.0.sellers
    }

    /// Whether `area` is in `ELIGIBLE_AREAS` (ignoring case and accents); any area when unset.
    pub fn area_is_eligible(&self, area: &str) -> bool {
        let area = fold(area);
        self.0.eligible_areas.is_empty() || self.0.eligible_areas.contains(&area)
    }
}

impl FromRef<AppState> for Arc<SellerDirectory> {
    fn from_ref(app: &AppState) -> Self {
        app.0.sellers.clone()
    }
}
