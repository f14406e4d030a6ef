//! Kommo OAuth 2.0 token management: where the access/refresh pair lives, when it is rotated,
//! and what happens when rotation fails.
//!
//! # The facts this is built on (docs/kommo.md, the OAuth row)
//!
//! * Access tokens live 86 400 s; refresh tokens are **single use**: every refresh returns a new
//!   pair and the old refresh token is dead at once. Reusing it gets
//!   `401 {"hint":"Token has been revoked", …}`.
//! * A long-lived token (private integrations) has no refresh token and maybe no known expiry.
//! * Errors from `/oauth2/access_token` are problem-shaped JSON with a `hint`.
//!
//! # Guarantees
//!
//! * **The store is the source of truth.** Tokens live in the [`Store`] as one named value
//!   (`account_key`, e.g. `kommo:tokens:<subdomain>`). `KOMMO_ACCESS_TOKEN`/`KOMMO_REFRESH_TOKEN`
//!   only *seed* it. The stored record remembers a fingerprint (SHA-256) of the seed it descends
//!   from: on start-up, if the environment still holds that same seed, the store wins (the env
//!   pair is stale — it was rotated by an earlier run and its refresh token is dead); if the
//!   operator put *different* tokens in the environment (a new long-lived token, a fresh
//!   install), the environment wins and replaces the stored record. That keeps "env seeds only"
//!   without making a stored pair impossible to replace.
//! * **Single-flight refresh.** Every refresh, code exchange and first load happens under one
//!   `tokio::sync::Mutex`. [`TokenManager::refresh_after_401`] takes the token that was rejected:
//!   if the current token is already a different one, somebody refreshed meanwhile and nothing is
//!   done. So 100 callers that hit a 401 with the same token cause exactly one refresh.
//! * **One rotation at a time across nodes.** Nodes on one Redis share the stored pair. Before
//!   a refresh a node reads the stored record: a newer generation means another node rotated
//!   (the refresh token in hand is dead), and that pair is taken instead. Otherwise it takes the
//!   store's rotation lease ([`Store::try_lease`], [`ROTATION_LEASE`]), reads again, refreshes,
//!   stores the new pair and gives the lease up; nodes that find the lease taken wait for the
//!   new pair to appear in the store. So a token expiry on three nodes is one refresh.
//! * **Persist before use.** A rotated pair is written with `put_value` *before* it replaces the
//!   pair in memory. If the write fails (after a few quick retries) the pair is the only copy in
//!   the world (the old refresh token is already dead), so it is kept in memory as *pending*, a
//!   background task keeps retrying the write until it lands, and callers get
//!   [`KommoError::TokenStore`] (retryable) meanwhile. The pending pair is installed as soon as a
//!   write succeeds; it is never dropped and never used undurably.
//! * **No retry loop on a dead authorization.** A 400/401 from the refresh grant (revoked,
//!   expired, invalid refresh token, bad client) means no request can succeed until a human acts:
//!   the state becomes [`TokenState::ReauthorizeNeeded`] (stored too, so a restart does not try
//!   again), and every later call fails fast with [`KommoError::ReauthorizeNeeded`] without
//!   touching Kommo — until [`TokenManager::exchange_code`] installs a new pair or the operator
//!   seeds new tokens. A rejected long-lived token leads to the same state. The other nodes take
//!   the state from the store at their next refresh instead of presenting the dead refresh
//!   token again, and while in it look in the store every [`REAUTHORIZE_RECHECK`] for the pair
//!   a re-authorization through any node installed (its generation is above every stored one).
//! * **Refresh ahead.** [`TokenManager::access_token`] refreshes when less than
//!   [`REFRESH_MARGIN`] is left. If that early refresh fails for a transient reason (network,
//!   5xx, 429, 403) while the current token is still valid, the current token is returned and the
//!   next call tries again.
//!
//! Caveat (inherent to single-use refresh tokens): if a refresh request reaches Kommo but its
//! answer is lost (timeout), Kommo has rotated and we do not know the new pair; the next refresh
//! gets "Token has been revoked" and the state becomes `ReauthorizeNeeded`.
//!
//! Token requests do not go through the API rate limiter (they are one per day, or one per
//! 401 storm thanks to single-flight) and tokens are never logged ([`Tokens`]'s `Debug` redacts).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use super::error::KommoError;
use crate::store::Store;

/// Refresh when less than this is left before `expires_at`.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long one token request may take.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Quick inline attempts to persist a rotated pair before handing it to the background task.
const INLINE_PERSIST_ATTEMPTS: u32 = 3;

/// How long one node may hold the token rotation lease: a token request and the write after it.
pub const ROTATION_LEASE: Duration = Duration::from_secs(30);

/// How often a node waiting for another node's rotation looks for the new pair.
const ROTATION_POLL: Duration = Duration::from_millis(100);

/// While the authorization is dead, how often a call looks in the store for a pair another
/// node installed (an admin re-authorized through it); between looks calls fail fast.
pub const REAUTHORIZE_RECHECK: Duration = Duration::from_secs(2);

/// The authorize page (docs/kommo.md, the OAuth row).
const AUTHORIZE_URL: &str = "https://www.kommo.com/oauth";

/// An OAuth token pair as stored. A long-lived token has no refresh token and maybe no expiry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for Tokens {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"<redacted>")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Tokens {
    fn expiring(&self, now: u64) -> bool {
        self.expires_at
            .is_some_and(|at| now.saturating_add(REFRESH_MARGIN.as_secs()) >= at)
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Identifies a seed without storing it: SHA-256 of both tokens, hex.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.access_token.as_bytes());
        h.update(b"\n");
        h.update(self.refresh_token.as_deref().unwrap_or("").as_bytes());
        hex::encode(h.finalize())
    }
}

/// What `/health` shows about the Kommo authorization: `reauthorize_needed` (with a `reason`)
/// when a human must authorize the integration again at `/oauth/authorize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
#[schema(example = json!({"state": "not_configured"}))]
pub enum TokenState {
    /// A token is available and not about to expire.
    Ok,
    /// Less than the refresh margin (5 minutes) left: a refresh is due, or a long-lived token
    /// is ending.
    Expiring,
    /// An operator must authorize the integration again (or set a new long-lived token).
    ReauthorizeNeeded { reason: String },
    /// No token stored and none given.
    NotConfigured,
}

/// How to reach the token endpoint and where the tokens live.
#[derive(Clone)]
pub struct OAuthSettings {
    pub client_id: String,
    pub client_secret: String,
    pub redirect_uri: String,
    /// `https://<subdomain>.kommo.com`; the token endpoint is `{base_url}/oauth2/access_token`.
    pub base_url: String,
    /// The store value's name, e.g. `kommo:tokens:<subdomain>`.
    pub account_key: String,
    /// Tokens from the environment: used only when the store holds none descending from them.
    pub seed: Option<Tokens>,
}

impl std::fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("redirect_uri", &self.redirect_uri)
            .field("base_url", &self.base_url)
            .field("account_key", &self.account_key)
            .field("seed", &self.seed)
            .finish()
    }
}

/// The stored value (JSON).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    tokens: Option<Tokens>,
    /// Set when the authorization is dead: the reason shown by `/health`.
    #[serde(default)]
    reauthorize: Option<String>,
    /// Fingerprint of the env seed this record descends from (see the module docs).
    #[serde(default)]
    seed_fingerprint: Option<String>,
    /// Incremented on every installed pair.
    #[serde(default)]
    generation: u64,
    /// Unix seconds of the write.
    #[serde(default)]
    updated_at: u64,
}

#[derive(Default)]
struct Current {
    loaded: bool,
    record: Record,
    /// A rotated pair not yet durable (see the module docs).
    pending: Option<Tokens>,
    /// While re-authorization is needed: when the store was last read for a newer pair.
    reauthorize_checked: Option<Instant>,
}

struct Shared {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    settings: OAuthSettings,
    current: Mutex<Current>,
    /// Serializes load, refresh and code exchange (single flight).
    gate: tokio::sync::Mutex<()>,
    refreshes: AtomicU64,
    refresh_requests: AtomicU64,
    persist_task: AtomicBool,
    /// This process among the nodes taking the rotation lease.
    node: String,
}

/// Owns the Kommo token pair of one account. Cheap to clone (shared state).
#[derive(Clone)]
pub struct TokenManager {
    shared: Arc<Shared>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A failure of the token endpoint, before it is turned into a [`KommoError`].
#[derive(Deserialize, Default)]
struct OAuthProblem {
    #[serde(default)]
    hint: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenManager {
    /// Nothing is read yet: the store is consulted on first use, or eagerly by
    /// [`TokenManager::load`] (call it at start-up so `/health` is right from the start).
    pub fn new(store: Arc<dyn Store>, http: reqwest::Client, settings: OAuthSettings) -> Self {
        TokenManager {
            shared: Arc::new(Shared {
                store,
                http,
                settings,
                current: Mutex::new(Current::default()),
                gate: tokio::sync::Mutex::new(()),
                refreshes: AtomicU64::new(0),
                refresh_requests: AtomicU64::new(0),
                persist_task: AtomicBool::new(false),
                node: crate::node::name(),
            }),
        }
    }

    /// Reads the stored tokens (seeding the store from the environment when appropriate) and
    /// returns the resulting state. Idempotent.
    pub async fn load(&self) -> Result<TokenState, KommoError> {
        let _gate = self.shared.gate.lock().await;
        self.ensure_loaded_locked().await?;
        Ok(self.state())
    }

    /// The current state, without I/O. Before the first load it is derived from the seed.
    pub fn state(&self) -> TokenState {
        let current = self.shared.current.lock().unwrap();
        if !current.loaded {
            return match &self.shared.settings.seed {
                Some(seed) => state_of(Some(seed), None, now_unix()),
                None => TokenState::NotConfigured,
            };
        }
        state_of(
            current.pending.as_ref().or(current.record.tokens.as_ref()),
            current.record.reauthorize.as_deref(),
            now_unix(),
        )
    }

    /// Successful refreshes (refresh grant) since start.
    pub fn refresh_count(&self) -> u64 {
        self.shared.refreshes.load(Ordering::Relaxed)
    }

    /// Refresh-grant requests sent since start (successful or not).
    pub fn refresh_requests(&self) -> u64 {
        self.shared.refresh_requests.load(Ordering::Relaxed)
    }

    /// The HTTP client (shared with the API client: one connection pool).
    pub fn http(&self) -> &reqwest::Client {
        &self.shared.http
    }

    /// The store the tokens live in (the client's shared request schedule lives there too).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.shared.settings
    }

    /// The page where an admin authorizes the integration; Kommo redirects to `redirect_uri`
    /// with `code` and the given `state`.
    pub fn authorize_url(&self, state: &str) -> String {
        let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        format!(
            "{AUTHORIZE_URL}?client_id={}&state={}&mode=post_message",
            enc(&self.shared.settings.client_id),
            enc(state)
        )
    }

    /// A valid access token, refreshing first when it expires in less than
    /// [`REFRESH_MARGIN`]. Fails fast with [`KommoError::ReauthorizeNeeded`] while the
    /// authorization is dead.
    pub async fn access_token(&self) -> Result<String, KommoError> {
        // Fast path: no lock held across an await, no I/O.
        {
            let current = self.shared.current.lock().unwrap();
            if current.loaded && current.pending.is_none() {
                if let Some(reason) = &current.record.reauthorize {
                    let looked_lately = current
                        .reauthorize_checked
                        .is_some_and(|at| at.elapsed() < REAUTHORIZE_RECHECK);
                    if looked_lately {
                        return Err(KommoError::ReauthorizeNeeded {
                            reason: reason.clone(),
                        });
                    }
                } else {
                    match &current.record.tokens {
                        Some(t) if !t.expiring(now_unix()) => return Ok(t.access_token.clone()),
                        None => return Err(KommoError::NotConfigured),
                        Some(_) => {}
                    }
                }
            }
        }
        let _gate = self.shared.gate.lock().await;
        self.ensure_loaded_locked().await?;
        self.persist_pending_locked().await?;
        let (tokens, reauth) = {
            let current = self.shared.current.lock().unwrap();
            (
                current.record.tokens.clone(),
                current.record.reauthorize.clone(),
            )
        };
        if let Some(reason) = reauth {
            // Another node may have been re-authorized meanwhile: its pair is in the store. (The
            // callers that queued on the gate behind the one that looked do not look again.)
            {
                let mut current = self.shared.current.lock().unwrap();
                if current
                    .reauthorize_checked
                    .is_some_and(|at| at.elapsed() < REAUTHORIZE_RECHECK)
                {
                    return Err(KommoError::ReauthorizeNeeded { reason });
                }
                current.reauthorize_checked = Some(Instant::now());
            }
            return match self.adopt_newer_locked().await? {
                Some(tokens) => Ok(tokens.access_token),
                None => Err(KommoError::ReauthorizeNeeded { reason }),
            };
        }
        let tokens = tokens.ok_or(KommoError::NotConfigured)?;
        let now = now_unix();
        if !tokens.expiring(now) {
            return Ok(tokens.access_token);
        }
        let Some(refresh_token) = tokens.refresh_token.clone() else {
            if tokens.expired(now) {
                let reason =
                    "the long-lived Kommo token has expired: generate a new one".to_owned();
                if let Some(replaced) = self.set_reauthorize_locked(&reason).await {
                    return Ok(replaced.access_token);
                }
                return Err(KommoError::ReauthorizeNeeded { reason });
            }
            warn!(
                expires_at = tokens.expires_at,
                "the long-lived Kommo token expires soon and cannot be refreshed"
            );
            return Ok(tokens.access_token);
        };
        match self.refresh_locked(&refresh_token).await {
            Ok(new) => Ok(new.access_token),
            Err(
                e @ (KommoError::Network(_)
                | KommoError::Server { .. }
                | KommoError::RateLimited { .. }
                | KommoError::Blocked { .. }),
            ) if !tokens.expired(now) => {
                warn!(error = %e, "early Kommo token refresh failed; the current token is still valid");
                Ok(tokens.access_token)
            }
            Err(e) => Err(e),
        }
    }

    /// Called by the API client after Kommo answered 401 to `rejected`. Refreshes once for all
    /// concurrent callers: if the current token is no longer `rejected`, someone already did.
    pub async fn refresh_after_401(&self, rejected: &str) -> Result<(), KommoError> {
        let _gate = self.shared.gate.lock().await;
        self.ensure_loaded_locked().await?;
        self.persist_pending_locked().await?;
        let (tokens, reauth) = {
            let current = self.shared.current.lock().unwrap();
            (
                current.record.tokens.clone(),
                current.record.reauthorize.clone(),
            )
        };
        if let Some(reason) = reauth {
            return Err(KommoError::ReauthorizeNeeded { reason });
        }
        let tokens = tokens.ok_or(KommoError::NotConfigured)?;
        if tokens.access_token != rejected {
            return Ok(());
        }
        match tokens.refresh_token {
            None => {
                let reason =
                    "Kommo rejected the long-lived token (401): generate a new one".to_owned();
                match self.set_reauthorize_locked(&reason).await {
                    Some(_) => Ok(()),
                    None => Err(KommoError::ReauthorizeNeeded { reason }),
                }
            }
            Some(refresh_token) => self.refresh_locked(&refresh_token).await.map(|_| ()),
        }
    }

    /// Exchanges an authorization code (from the OAuth callback) for a new pair, which replaces
    /// whatever was stored and clears `ReauthorizeNeeded`.
    pub async fn exchange_code(&self, code: &str) -> Result<(), KommoError> {
        let _gate = self.shared.gate.lock().await;
        self.ensure_loaded_locked().await?;
        // The new pair must be newer than any another node stored, or the nodes that hold an
        // older pair (or wait for re-authorization) would not take it.
        let floor = self.stored_record().await?.map_or(0, |r| r.generation);
        let s = &self.shared.settings;
        let body = serde_json::json!({
            "client_id": s.client_id,
            "client_secret": s.client_secret,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": s.redirect_uri,
        });
        let tokens = self.token_request(&body, "authorization_code").await?;
        // A code is single use too: the pair must not be lost.
        self.install_locked(tokens, floor).await?;
        info!("Kommo authorization code exchanged; tokens stored");
        Ok(())
    }

    // ---- internals (all `_locked` functions run with the gate held) ----

    async fn ensure_loaded_locked(&self) -> Result<(), KommoError> {
        if self.shared.current.lock().unwrap().loaded {
            return Ok(());
        }
        let s = &self.shared.settings;
        let stored = self
            .shared
            .store
            .get_value(&s.account_key)
            .await
            .map_err(|e| KommoError::TokenStore(format!("cannot read stored tokens: {e}")))?;
        let stored: Option<Record> = match stored {
            None => None,
            Some(bytes) => match serde_json::from_slice(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    error!(key = %s.account_key, error = %e, "stored Kommo tokens are unreadable; ignoring them");
                    None
                }
            },
        };
        let seed_fp = s.seed.as_ref().map(Tokens::fingerprint);
        let (record, write) = match (stored, &s.seed) {
            (Some(r), None) => (r, false),
            (Some(r), Some(_)) if r.seed_fingerprint == seed_fp => (r, false),
            (Some(_), Some(seed)) => {
                info!(
                    "Kommo tokens in the environment differ from those the stored pair came from: using the environment's"
                );
                (record_from_seed(seed, seed_fp), true)
            }
            (None, Some(seed)) => (record_from_seed(seed, seed_fp), true),
            (None, None) => (Record::default(), false),
        };
        if write {
            // The seed still lives in the environment, so a failed write loses nothing.
            if let Err(e) = self.write_record(&record).await {
                warn!(error = %e, "could not store the seeded Kommo tokens (will retry on rotation)");
            }
        }
        let mut current = self.shared.current.lock().unwrap();
        current.record = record;
        current.loaded = true;
        Ok(())
    }

    async fn write_record(&self, record: &Record) -> Result<(), KommoError> {
        let mut record = record.clone();
        record.updated_at = now_unix();
        let bytes = serde_json::to_vec(&record).expect("token record serializes");
        self.shared
            .store
            .put_value(&self.shared.settings.account_key, &bytes)
            .await
            .map_err(|e| KommoError::TokenStore(e.to_string()))
    }

    /// The record that installing `tokens` produces: a generation above ours and `floor`.
    fn next_record(&self, tokens: Tokens, floor: u64) -> Record {
        let current = self.shared.current.lock().unwrap();
        Record {
            tokens: Some(tokens),
            reauthorize: None,
            seed_fingerprint: current.record.seed_fingerprint.clone(),
            generation: current.record.generation.max(floor) + 1,
            updated_at: 0,
        }
    }

    /// Persists `tokens`, then swaps them in. On persistent store failure keeps them as pending
    /// (see the module docs) and returns [`KommoError::TokenStore`].
    async fn install_locked(&self, tokens: Tokens, floor: u64) -> Result<Tokens, KommoError> {
        let record = self.next_record(tokens.clone(), floor);
        let mut last = None;
        for attempt in 0..INLINE_PERSIST_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            match self.write_record(&record).await {
                Ok(()) => {
                    let mut current = self.shared.current.lock().unwrap();
                    current.record = record;
                    current.pending = None;
                    return Ok(tokens);
                }
                Err(e) => last = Some(e),
            }
        }
        let err = last.expect("at least one attempt");
        error!(
            key = %self.shared.settings.account_key,
            error = %err,
            "rotated Kommo tokens could not be stored; keeping them in memory and retrying in the background"
        );
        self.shared.current.lock().unwrap().pending = Some(tokens);
        self.spawn_persist_task();
        Err(err)
    }

    /// With a pending pair: one attempt to persist it (installing it on success).
    async fn persist_pending_locked(&self) -> Result<(), KommoError> {
        let Some(pending) = self.shared.current.lock().unwrap().pending.clone() else {
            return Ok(());
        };
        let record = self.next_record(pending, 0);
        self.write_record(&record).await?;
        let mut current = self.shared.current.lock().unwrap();
        current.record = record;
        current.pending = None;
        info!("pending Kommo tokens stored");
        Ok(())
    }

    fn spawn_persist_task(&self) {
        if self.shared.persist_task.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(500);
            loop {
                tokio::time::sleep(delay).await;
                let _gate = this.shared.gate.lock().await;
                if this.shared.current.lock().unwrap().pending.is_none() {
                    break;
                }
                match this.persist_pending_locked().await {
                    Ok(()) => break,
                    Err(e) => {
                        error!(error = %e, "still cannot store rotated Kommo tokens; retrying");
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
            this.shared.persist_task.store(false, Ordering::SeqCst);
        });
    }

    /// Marks the authorization dead, in memory and in the store — unless the store holds
    /// another live pair than the one found dead (an admin re-authorized through another node
    /// meanwhile): that pair is taken and returned instead, and no mark hides it from the other
    /// nodes. (A re-authorization landing between this read and the write is still hidden until
    /// its node's next rotation: the writes are not compare-and-set.)
    async fn set_reauthorize_locked(&self, reason: &str) -> Option<Tokens> {
        if let Ok(Some(stored)) = self.stored_record().await {
            let mut current = self.shared.current.lock().unwrap();
            if stored.reauthorize.is_none()
                && stored.tokens.is_some()
                && stored.tokens != current.record.tokens
                && current.pending.is_none()
            {
                info!(
                    generation = stored.generation,
                    "the Kommo pair found dead was replaced through another node: using the new one"
                );
                let tokens = stored.tokens.clone();
                current.record = stored;
                current.reauthorize_checked = None;
                return tokens;
            }
        }
        error!(
            reason,
            "Kommo authorization is dead: an admin must authorize the integration again"
        );
        let record = {
            let mut current = self.shared.current.lock().unwrap();
            current.record.reauthorize = Some(reason.to_owned());
            current.reauthorize_checked = Some(Instant::now());
            current.record.clone()
        };
        if let Err(e) = self.write_record(&record).await {
            warn!(error = %e, "could not store the reauthorize-needed state");
        }
        None
    }

    /// Refreshes once across nodes (see the module docs), or takes the pair another node
    /// stored meanwhile.
    async fn refresh_locked(&self, refresh_token: &str) -> Result<Tokens, KommoError> {
        if let Some(tokens) = self.adopt_newer_locked().await? {
            return Ok(tokens);
        }
        let store = &self.shared.store;
        let lease = format!("{}:rotation", self.shared.settings.account_key);
        let holder = &self.shared.node;
        let waiting = Instant::now();
        loop {
            let held = store
                .try_lease(&lease, holder, ROTATION_LEASE)
                .await
                .map_err(|e| {
                    KommoError::TokenStore(format!("cannot take the rotation lease: {e}"))
                })?;
            if held {
                break;
            }
            // A holder that died lets its lease expire: wait that long at most.
            if waiting.elapsed() > ROTATION_LEASE + ROTATION_POLL {
                return Err(KommoError::TokenStore(
                    "another node is still rotating the Kommo tokens".into(),
                ));
            }
            tokio::time::sleep(ROTATION_POLL).await;
            if let Some(tokens) = self.adopt_newer_locked().await? {
                return Ok(tokens);
            }
        }
        // The holder before us may have finished between our read and our lease.
        let rotated = match self.adopt_newer_locked().await {
            Ok(Some(tokens)) => Ok(tokens),
            Ok(None) => self.rotate_locked(refresh_token).await,
            Err(e) => Err(e),
        };
        // A rotated pair not yet stored is the only live one: the lease stays (and expires by
        // itself) so that no other node refreshes with the dead token meanwhile.
        let undurable = self.shared.current.lock().unwrap().pending.is_some();
        if !undurable && let Err(e) = store.release_lease(&lease, holder).await {
            warn!(error = %e, "could not give the token rotation lease up (it expires by itself)");
        }
        rotated
    }

    /// The record in the store, if any (and readable).
    async fn stored_record(&self) -> Result<Option<Record>, KommoError> {
        let key = &self.shared.settings.account_key;
        let stored = self
            .shared
            .store
            .get_value(key)
            .await
            .map_err(|e| KommoError::TokenStore(format!("cannot read stored tokens: {e}")))?;
        Ok(stored.and_then(|b| serde_json::from_slice::<Record>(&b).ok()))
    }

    /// The pair another node stored after ours (a newer generation), now ours too; `None` when
    /// the stored record is not newer. When another node found our pair's authorization dead
    /// (same generation, marked), this node takes that state instead of presenting the dead
    /// refresh token again: [`KommoError::ReauthorizeNeeded`].
    async fn adopt_newer_locked(&self) -> Result<Option<Tokens>, KommoError> {
        let Some(record) = self.stored_record().await? else {
            return Ok(None);
        };
        let mut current = self.shared.current.lock().unwrap();
        if current.pending.is_some() {
            return Ok(None);
        }
        if record.generation == current.record.generation
            && current.record.reauthorize.is_none()
            && record.tokens == current.record.tokens
            && let Some(reason) = record.reauthorize.clone()
        {
            current.record.reauthorize = Some(reason.clone());
            current.reauthorize_checked = Some(Instant::now());
            return Err(KommoError::ReauthorizeNeeded { reason });
        }
        if record.generation <= current.record.generation {
            return Ok(None);
        }
        if let Some(reason) = record.reauthorize.clone() {
            // Rotated by another node, then found dead there too.
            current.record = record;
            current.reauthorize_checked = Some(Instant::now());
            return Err(KommoError::ReauthorizeNeeded { reason });
        }
        let Some(tokens) = record.tokens.clone() else {
            return Ok(None);
        };
        info!(
            generation = record.generation,
            "Kommo tokens rotated or re-authorized by another node: using them"
        );
        current.record = record;
        current.reauthorize_checked = None;
        Ok(Some(tokens))
    }

    /// The refresh grant itself.
    async fn rotate_locked(&self, refresh_token: &str) -> Result<Tokens, KommoError> {
        let s = &self.shared.settings;
        let body = serde_json::json!({
            "client_id": s.client_id,
            "client_secret": s.client_secret,
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "redirect_uri": s.redirect_uri,
        });
        self.shared.refresh_requests.fetch_add(1, Ordering::Relaxed);
        match self.token_request(&body, "refresh_token").await {
            Ok(tokens) => {
                self.shared.refreshes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("conversa_kommo_token_refreshes_total").increment(1);
                self.install_locked(tokens, 0).await
            }
            Err(KommoError::OAuth { status, hint, .. }) if status == 400 || status == 401 => {
                let reason = format!("Kommo rejected the refresh token ({status}): {hint}");
                match self.set_reauthorize_locked(&reason).await {
                    Some(replaced) => Ok(replaced),
                    None => Err(KommoError::ReauthorizeNeeded { reason }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// POSTs a grant to `/oauth2/access_token`.
    async fn token_request(
        &self,
        body: &serde_json::Value,
        grant: &'static str,
    ) -> Result<Tokens, KommoError> {
        let url = format!(
            "{}/oauth2/access_token",
            self.shared.settings.base_url.trim_end_matches('/')
        );
        let started = Instant::now();
        let result = self
            .shared
            .http
            .post(&url)
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .json(body)
            .send()
            .await;
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(method = "POST", path = "/oauth2/access_token", grant, error = %e, "Kommo token request failed");
                return Err(KommoError::Network(e.without_url().to_string()));
            }
        };
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        info!(
            method = "POST",
            path = "/oauth2/access_token",
            status,
            latency_ms = started.elapsed().as_millis() as u64,
            grant,
            "kommo oauth"
        );
        match status {
            200..=299 => {
                let parsed: TokenResponse = serde_json::from_slice(&bytes)
                    .map_err(|e| KommoError::Decode(format!("token response: {e}")))?;
                Ok(Tokens {
                    access_token: parsed.access_token,
                    refresh_token: parsed.refresh_token,
                    expires_at: parsed.expires_in.map(|s| now_unix() + s),
                })
            }
            403 => Err(KommoError::Blocked {
                retry_in: super::client::DEFAULT_BLOCK_COOLDOWN,
            }),
            429 => Err(KommoError::RateLimited { attempts: 1 }),
            500..=599 => Err(KommoError::Server {
                status,
                body_excerpt: excerpt(&bytes),
            }),
            _ => {
                let p: OAuthProblem = serde_json::from_slice(&bytes).unwrap_or_default();
                Err(KommoError::OAuth {
                    status,
                    hint: p
                        .hint
                        .or(p.title)
                        .unwrap_or_else(|| format!("HTTP {status}")),
                    detail: p.detail.unwrap_or_else(|| excerpt(&bytes)),
                })
            }
        }
    }
}

fn record_from_seed(seed: &Tokens, seed_fingerprint: Option<String>) -> Record {
    Record {
        tokens: Some(seed.clone()),
        reauthorize: None,
        seed_fingerprint,
        generation: 0,
        updated_at: 0,
    }
}

fn state_of(tokens: Option<&Tokens>, reauth: Option<&str>, now: u64) -> TokenState {
    if let Some(reason) = reauth {
        return TokenState::ReauthorizeNeeded {
            reason: reason.to_owned(),
        };
    }
    match tokens {
        None => TokenState::NotConfigured,
        Some(t) if t.expiring(now) => TokenState::Expiring,
        Some(_) => TokenState::Ok,
    }
}

/// The first 200 characters of a body, for error messages.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(200).collect();
    if text.chars().nth(200).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use conversa_actors::store::MemoryStore;

    fn settings(seed: Option<Tokens>) -> OAuthSettings {
        OAuthSettings {
            client_id: "client id/1".into(),
            client_secret: "secret".into(),
            redirect_uri: "https://conversa.example/oauth/callback".into(),
            // Nothing listens here: tests below never reach the network.
            base_url: "http://127.0.0.1:9".into(),
            account_key: "kommo:tokens:test".into(),
            seed,
        }
    }

    fn tokens(access: &str, refresh: Option<&str>, expires_at: Option<u64>) -> Tokens {
        Tokens {
            access_token: access.into(),
            refresh_token: refresh.map(Into::into),
            expires_at,
        }
    }

    #[test]
    fn debug_never_prints_tokens() {
        let t = tokens("secret-access", Some("secret-refresh"), Some(1));
        let s = format!("{t:?}");
        assert!(!s.contains("secret"), "{s}");
        let st = format!("{:?}", settings(Some(t)));
        assert!(!st.contains("secret-"), "{st}");
    }

    #[test]
    fn token_state_serializes_snake_case() {
        assert_eq!(
            serde_json::to_value(TokenState::ReauthorizeNeeded {
                reason: "revoked".into()
            })
            .unwrap(),
            serde_json::json!({"state": "reauthorize_needed", "reason": "revoked"})
        );
        assert_eq!(
            serde_json::to_value(TokenState::NotConfigured).unwrap(),
            serde_json::json!({"state": "not_configured"})
        );
    }

    #[test]
    fn authorize_url_is_encoded() {
        let m = TokenManager::new(
            Arc::new(MemoryStore::new()),
            reqwest::Client::new(),
            settings(None),
        );
        assert_eq!(
            m.authorize_url("a b&c"),
            "https://www.kommo.com/oauth?client_id=client+id%2F1&state=a+b%26c&mode=post_message"
        );
    }

    #[test]
    fn states() {
        let now = 1_000_000;
        assert_eq!(state_of(None, None, now), TokenState::NotConfigured);
        assert_eq!(
            state_of(Some(&tokens("a", None, None)), None, now),
            TokenState::Ok
        );
        assert_eq!(
            state_of(Some(&tokens("a", Some("r"), Some(now + 3600))), None, now),
            TokenState::Ok
        );
        assert_eq!(
            state_of(Some(&tokens("a", Some("r"), Some(now + 60))), None, now),
            TokenState::Expiring
        );
        assert!(matches!(
            state_of(Some(&tokens("a", None, None)), Some("x"), now),
            TokenState::ReauthorizeNeeded { .. }
        ));
    }

    #[tokio::test]
    async fn seed_is_stored_and_store_wins_over_the_same_seed() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let far = now_unix() + 86_400;
        let seed = tokens("env-a", Some("env-r"), Some(far));
        let m = TokenManager::new(
            store.clone(),
            reqwest::Client::new(),
            settings(Some(seed.clone())),
        );
        assert_eq!(m.access_token().await.unwrap(), "env-a");
        assert!(
            store
                .get_value("kommo:tokens:test")
                .await
                .unwrap()
                .is_some()
        );

        // Simulate a rotation by a previous run: the stored pair changed, its seed did not.
        let rotated = m.next_record(tokens("rot-a", Some("rot-r"), Some(far)), 0);
        m.write_record(&rotated).await.unwrap();
        let m2 = TokenManager::new(store.clone(), reqwest::Client::new(), settings(Some(seed)));
        assert_eq!(m2.access_token().await.unwrap(), "rot-a", "store wins");

        // New tokens in the environment replace the stored pair.
        let fresh = tokens("new-a", None, None);
        let m3 = TokenManager::new(store.clone(), reqwest::Client::new(), settings(Some(fresh)));
        assert_eq!(
            m3.access_token().await.unwrap(),
            "new-a",
            "a different seed wins"
        );

        // No seed at all: whatever is stored.
        let m4 = TokenManager::new(store, reqwest::Client::new(), settings(None));
        assert_eq!(m4.access_token().await.unwrap(), "new-a");
    }

    #[tokio::test]
    async fn nothing_configured() {
        let m = TokenManager::new(
            Arc::new(MemoryStore::new()),
            reqwest::Client::new(),
            settings(None),
        );
        assert_eq!(m.state(), TokenState::NotConfigured);
        assert!(matches!(
            m.access_token().await,
            Err(KommoError::NotConfigured)
        ));
        assert_eq!(m.load().await.unwrap(), TokenState::NotConfigured);
    }

    #[tokio::test]
    async fn long_lived_token_rejected_needs_reauthorization_without_any_request() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let m = TokenManager::new(
            store.clone(),
            reqwest::Client::new(),
            settings(Some(tokens("ll", None, None))),
        );
        assert_eq!(m.access_token().await.unwrap(), "ll");
        // Some other token was rejected: nothing to do.
        m.refresh_after_401("other").await.unwrap();
        assert_eq!(m.state(), TokenState::Ok);
        let err = m.refresh_after_401("ll").await.unwrap_err();
        assert!(matches!(err, KommoError::ReauthorizeNeeded { .. }));
        assert!(matches!(
            m.access_token().await,
            Err(KommoError::ReauthorizeNeeded { .. })
        ));
        assert_eq!(m.refresh_requests(), 0);
        // Stored: a restart with the same seed stays in that state.
        let m2 = TokenManager::new(
            store,
            reqwest::Client::new(),
            settings(Some(tokens("ll", None, None))),
        );
        assert!(matches!(
            m2.load().await.unwrap(),
            TokenState::ReauthorizeNeeded { .. }
        ));
    }

    #[tokio::test]
    async fn expired_long_lived_token() {
        let m = TokenManager::new(
            Arc::new(MemoryStore::new()),
            reqwest::Client::new(),
            settings(Some(tokens("ll", None, Some(now_unix() - 1)))),
        );
        assert!(matches!(
            m.access_token().await,
            Err(KommoError::ReauthorizeNeeded { .. })
        ));
    }

    #[tokio::test]
    async fn unreachable_token_endpoint_keeps_a_still_valid_token() {
        // Expiring soon (inside the margin) but not expired: the early refresh fails on the
        // network and the current token is still handed out.
        let m = TokenManager::new(
            Arc::new(MemoryStore::new()),
            reqwest::Client::new(),
            settings(Some(tokens("a", Some("r"), Some(now_unix() + 60)))),
        );
        assert_eq!(m.access_token().await.unwrap(), "a");
        assert_eq!(m.refresh_requests(), 1);
        assert_eq!(m.state(), TokenState::Expiring);
    }
}
