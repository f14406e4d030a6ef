//! How every request to Kommo goes out: the [`KommoClient`] itself, its settings, and the
//! protections Kommo's limits demand. The endpoints are in `client.rs`. Every call is traced with
//! `tracing::info!` fields `method`, `path`, `status`, `latency_ms` (never a token), and counted
//! per `(endpoint, status)` in `conversa_kommo_calls_total`.
//!
//! # Why it behaves as it does (docs/kommo.md, *REST calls out* and *Limits*)
//!
//! * **≤ 7 requests per second per account, as seen by Kommo.** One `governor` limiter per
//!   account (a process-wide registry keyed by the API host, so two clients for the same account
//!   share it) with **burst 1** and one permit every `1 s / max_rps` **plus a 15 ms margin**.
//!   With burst 1, permits are at least one period apart, so any 8 consecutive requests span at
//!   least 7 periods; at exactly `1/7 s` that span is exactly 1 s, and the smallest network
//!   jitter (the first of the 8 delayed a little, the last not) would put 8 requests into one
//!   second *at the server*. The margin gives 7 × 15 ms = 105 ms of tolerance for the cost of
//!   ≈ 6.4 req/s. A larger burst would be worse: GCRA with burst `b` admits `b` requests at once
//!   *plus* the steady rate, i.e. up to `b + 6` in a second. The token is fetched *after* the
//!   permit, so callers that queued behind a refresh use the new token. `max_rps` is capped at 7.
//!   Waits are counted ([`KommoClient::limiter_waits`]).
//! * **One budget for all nodes.** With a store other processes share (Redis), the turns come
//!   from one schedule per account in that store instead
//!   ([`take_turn`](crate::store::Store::take_turn): slots one period apart by Redis's clock,
//!   the same period and margin), so any number of engine nodes together keep to 7 requests a
//!   second. A turn is reserved at most 5 s ahead (a caller cancelled while it waits would
//!   waste its slot); past that the caller asks again later. If the store cannot be reached,
//!   each node keeps to its share (`share_period`: `⌊7 / nodes⌋` a second, for the nodes it
//!   last saw taking turns within a minute) with a local limiter, until the store answers
//!   again. Nodes that took no turn in that minute are not counted, so a Redis outage can let
//!   idle nodes and busy ones together exceed the budget for a while.
//! * **429** (an HTML page, no `Retry-After`): exponential backoff with jitter (`backon`; 5
//!   attempts, base 500 ms, each delay capped at 8 s), every attempt going through the limiter
//!   again. Still 429 after that → [`KommoError::RateLimited`].
//! * **403 with an HTML body** (nginx page: the account or IP is blocked for abuse): a circuit
//!   opens for `block_cooldown` (5 min by default), an `error!` alert is logged, and every call
//!   fails fast with [`KommoError::Blocked`] without touching Kommo — a retry storm is what gets
//!   an account blocked longer. After the cooldown one probe call goes through; others keep
//!   failing fast until it answers. A 403 with a problem+json body ("Invalid scope") is an
//!   ordinary [`KommoError::Api`] error, not a block. The block is shared with the other nodes
//!   through the store (the named value `kommo:<host>:<port>:blocked`, the Unix millisecond it
//!   ends): a node reads it before every call (a store read beside at most seven calls a
//!   second), so one node's 403 stops them all instead of each earning its own. Each node
//!   probes once when the cooldown ends.
//! * **401**: [`TokenManager::refresh_after_401`] (single-flight), then the request is retried
//!   once with the new token. A second 401 is an [`KommoError::Api`] error.
//! * **204** means "nothing": `Ok(None)` / an empty list (Kommo answers 204, not 404, for a
//!   missing lead or contact and for empty lists).
//! * **Other 4xx**: problem+json → [`KommoError::Api`] with the `validation-errors`.
//! * **5xx → [`KommoError::Server`], never retried here.** A 5xx on `salesbot/run` may come after
//!   the bot has already sent the WhatsApp message; only the caller (the outbox, with its
//!   idempotency knowledge) may decide to try again. Network failures and timeouts →
//!   [`KommoError::Network`], also left to the caller.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::{Method, Url};
use serde_json::Value;
use tracing::{error, info, warn};

use super::error::KommoError;
use super::oauth::TokenManager;
use super::wire::api_error;
use conversa_actors::Commitment;

/// Kommo's documented limit (docs/kommo.md, *Limits*).
pub const MAX_RPS: u32 = 7;

/// Cooldown after a 403 block, unless configured otherwise.
pub const DEFAULT_BLOCK_COOLDOWN: Duration = Duration::from_secs(5 * 60);

/// Added to every limiter period (see the module docs).
pub const LIMITER_MARGIN: Duration = Duration::from_millis(15);

/// Settings of one account's client.
#[derive(Clone, Debug)]
pub struct KommoSettings {
    /// e.g. `https://sua-conta.kommo.com/api/v4/`. The scheme + host give the base for
    /// `/api/v2/…`.
    pub api_url: String,
    /// Requests per second; 0 means the default; capped at [`MAX_RPS`].
    pub max_rps: u32,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// How long the circuit stays open after a 403 block.
    pub block_cooldown: Duration,
    /// Attempts for a request answered 429 (first try included).
    pub max_attempts_429: u32,
    /// First backoff delay after a 429.
    pub backoff_base: Duration,
    /// Cap of one backoff delay (jitter included).
    pub backoff_max: Duration,
    /// Requests in flight at once; the others wait their turn (a slow Kommo never gets a
    /// connection per waiting effect).
    pub max_concurrency: usize,
}

impl KommoSettings {
    /// Defaults: 7 req/s, 10 s timeout, 5 min block cooldown, 5 attempts on 429 from 500 ms to
    /// 8 s.
    pub fn new(api_url: impl Into<String>) -> Self {
        KommoSettings {
            api_url: api_url.into(),
            max_rps: MAX_RPS,
            timeout: Duration::from_secs(10),
            block_cooldown: DEFAULT_BLOCK_COOLDOWN,
            max_attempts_429: 5,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
            max_concurrency: 4,
        }
    }
}

/// A reqwest client suited to Kommo (rustls, connect timeout, pooled). Build one and share it
/// between the [`TokenManager`] and the [`KommoClient`].
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("conversa/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("reqwest client builds")
}

/// A metrics label: the method and the path with numeric segments replaced by `{id}`.
fn endpoint_label(method: &Method, path: &str) -> String {
    let path: Vec<&str> = path
        .split('/')
        .map(|seg| {
            if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else {
                seg
            }
        })
        .collect();
    format!("{method} {}", path.join("/"))
}

// ---- the limiter registry ----

/// One limiter per account host in the whole process (see the module docs).
static LIMITERS: LazyLock<DashMap<String, Arc<DefaultDirectRateLimiter>>> =
    LazyLock::new(DashMap::new);

fn limiter_for(key: &str, period: Duration) -> Arc<DefaultDirectRateLimiter> {
    LIMITERS
        .entry(key.to_owned())
        .or_insert_with(|| limiter(period))
        .clone()
}

/// Permits `period` apart, burst 1 (see the module docs).
fn limiter(period: Duration) -> Arc<DefaultDirectRateLimiter> {
    let quota = Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(NonZeroU32::MIN);
    Arc::new(RateLimiter::direct(quota))
}

/// The spacing that keeps `nodes` nodes, each on its own limiter, within `max_rps` requests
/// in any one-second window: each may send `k = max_rps / nodes` (rounded down) in a window,
/// which a limiter spaced `1 s / k` plus the margin ensures (so 3 nodes get 2 each, not 7/3,
/// which would let each send 3 in some window). With more nodes than `max_rps` no spacing of
/// their own can promise it; each then sends one every `nodes / max_rps` seconds.
fn share_period(max_rps: u32, nodes: u32) -> Duration {
    let (max_rps, nodes) = (max_rps.max(1), nodes.max(1));
    match max_rps / nodes {
        0 => Duration::from_secs(1) * nodes / max_rps + LIMITER_MARGIN,
        each => Duration::from_secs(1) / each + LIMITER_MARGIN,
    }
}

pub(super) struct Request {
    pub(super) method: Method,
    pub(super) url: Url,
    pub(super) body: Option<Value>,
    /// For a request that must not be repeated: marked while it may have been carried out.
    pub(super) in_doubt: Option<Commitment>,
}

/// Per-call bookkeeping shared by its attempts.
#[derive(Default)]
struct CallState {
    /// The one retry after a 401 was used.
    refreshed: AtomicBool,
    /// Requests sent so far.
    attempts: AtomicU32,
    /// This call is the probe after a block cooldown.
    probe: AtomicBool,
}

pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

pub(super) struct Inner {
    pub(super) settings: KommoSettings,
    pub(super) http: reqwest::Client,
    pub(super) tokens: TokenManager,
    pub(super) v4: Url,
    pub(super) base: Url,
    /// This process's limiter for the account (used alone when the store is this process's).
    pub(super) limiter: Arc<DefaultDirectRateLimiter>,
    pub(super) limiter_waits: AtomicU64,
    /// Time between two requests to the account, margin included.
    pub(super) period: Duration,
    /// The account's schedule in a shared store, and this node's name there.
    pub(super) schedule: String,
    pub(super) node: String,
    /// Nodes seen taking turns at the last turn taken (1 before any).
    pub(super) nodes_seen: AtomicU32,
    /// While the shared schedule cannot be reached: this node's share of the budget, for the
    /// node count it was made for.
    pub(super) share: Mutex<Option<(u32, Arc<DefaultDirectRateLimiter>)>>,
    /// `Some(until)`: the circuit is open (a 403 block) until then.
    pub(super) blocked_until: Mutex<Option<Instant>>,
    /// The store value other nodes read the block from.
    pub(super) block_name: String,
    /// Turns to have a request in flight ([`KommoSettings::max_concurrency`]).
    pub(super) turns: tokio::sync::Semaphore,
}

/// The Kommo API client of one account. Cheap to clone (shared state).
#[derive(Clone)]
pub struct KommoClient {
    pub(super) inner: Arc<Inner>,
}

impl KommoClient {
    /// Uses the [`TokenManager`]'s HTTP client (one pool for both).
    pub fn new(settings: KommoSettings, tokens: TokenManager) -> Result<Self, KommoError> {
        let mut api = settings.api_url.trim().to_owned();
        if !api.ends_with('/') {
            api.push('/');
        }
        let v4 = Url::parse(&api)
            .map_err(|e| KommoError::Config(format!("api_url {:?}: {e}", settings.api_url)))?;
        if v4.host_str().is_none() || !matches!(v4.scheme(), "http" | "https") {
            return Err(KommoError::Config(format!(
                "api_url {:?} is not an http(s) URL",
                settings.api_url
            )));
        }
        let base = v4.join("/").expect("root of a valid URL");
        let max_rps = match settings.max_rps {
            0 => MAX_RPS,
            n => n.min(MAX_RPS),
        };
        let mut settings = settings;
        settings.max_rps = max_rps;
        let period = Duration::from_secs(1) / max_rps + LIMITER_MARGIN;
        let limiter = limiter_for(base.as_str(), period);
        let schedule = format!(
            "kommo:{}:{}",
            base.host_str().unwrap_or_default(),
            base.port_or_known_default().unwrap_or_default()
        );
        Ok(KommoClient {
            inner: Arc::new(Inner {
                http: tokens.http().clone(),
                tokens,
                v4,
                base,
                limiter,
                limiter_waits: AtomicU64::new(0),
                period,
                node: crate::node::name(),
                nodes_seen: AtomicU32::new(1),
                share: Mutex::new(None),
                blocked_until: Mutex::new(None),
                block_name: format!("{schedule}:blocked"),
                schedule,
                turns: tokio::sync::Semaphore::new(settings.max_concurrency.max(1)),
                settings,
            }),
        })
    }

    pub fn settings(&self) -> &KommoSettings {
        &self.inner.settings
    }

    /// The token manager (for `/health` and the OAuth callback).
    pub fn tokens(&self) -> &TokenManager {
        &self.inner.tokens
    }

    /// How many requests had to wait for the rate limiter.
    pub fn limiter_waits(&self) -> u64 {
        self.inner.limiter_waits.load(Ordering::Relaxed)
    }

    /// Successful token refreshes.
    pub fn refresh_count(&self) -> u64 {
        self.inner.tokens.refresh_count()
    }

    /// Whether the 403 circuit is open right now.
    pub fn circuit_open(&self) -> bool {
        self.inner
            .blocked_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }

    pub(super) fn v4(&self, path: &str) -> Result<Url, KommoError> {
        self.inner
            .v4
            .join(path)
            .map_err(|e| KommoError::Config(e.to_string()))
    }

    /// GET: `None` on 204 (or an empty 2xx body).
    pub(super) async fn get(&self, url: Url) -> Result<Option<Vec<u8>>, KommoError> {
        let answer = self.send(Method::GET, url, None).await?;
        if answer.status == 204 || answer.body.is_empty() {
            Ok(None)
        } else {
            Ok(Some(answer.body))
        }
    }

    /// One logical call: the circuit, then attempts with 429 backoff (see the module docs).
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Answer, KommoError> {
        self.send_request(Request {
            method,
            url,
            body,
            in_doubt: None,
        })
        .await
    }

    pub(super) async fn send_request(&self, request: Request) -> Result<Answer, KommoError> {
        let s = &self.inner.settings;
        let cap = s.backoff_max;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(s.backoff_base)
            .with_max_delay(cap)
            .with_max_times(s.max_attempts_429.saturating_sub(1) as usize)
            .with_jitter();
        let state = CallState::default();
        let path = request.url.path().to_owned();
        (|| self.attempt(&request, &state))
            .retry(backoff)
            .when(|e| matches!(e, KommoError::RateLimited { .. }))
            .adjust(move |_, d| d.map(|d| d.min(cap)))
            .notify(|_, delay| {
                warn!(
                    path = %path,
                    delay_ms = delay.as_millis() as u64,
                    "Kommo answered 429; backing off"
                )
            })
            .await
    }

    /// One attempt (plus its single retry after a 401 and a refresh).
    async fn attempt(&self, request: &Request, call: &CallState) -> Result<Answer, KommoError> {
        loop {
            self.adopt_shared_block().await;
            self.check_circuit(call)?;
            self.acquire().await;
            self.check_circuit(call)?;
            let token = match self.inner.tokens.access_token().await {
                Ok(t) => t,
                Err(KommoError::Blocked { .. }) => {
                    self.open_circuit("/oauth2/access_token").await;
                    return Err(KommoError::Blocked {
                        retry_in: self.inner.settings.block_cooldown,
                    });
                }
                Err(e) => return Err(e),
            };
            // Waiting for a turn sends nothing, so it comes before the request is in doubt.
            let turn = self.inner.turns.acquire().await.ok();
            let n = call.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(in_doubt) = &request.in_doubt {
                in_doubt.mark();
            }
            let sent = self.send_once(request, &token).await;
            drop(turn);
            let (answer, html) = sent?;
            if let Some(in_doubt) = &request.in_doubt
                && (matches!(answer.status, 401 | 429) || (answer.status == 403 && html))
            {
                // Refused before anything ran: trying again is safe.
                in_doubt.clear();
            }
            if answer.status == 403 && html {
                self.open_circuit(request.url.path()).await;
                return Err(KommoError::Blocked {
                    retry_in: self.inner.settings.block_cooldown,
                });
            }
            // Any other answer means Kommo is serving us again.
            self.close_circuit();
            match answer.status {
                401 if !call.refreshed.swap(true, Ordering::Relaxed) => {
                    self.inner.tokens.refresh_after_401(&token).await?;
                    continue;
                }
                429 => return Err(KommoError::RateLimited { attempts: n }),
                200..=299 => return Ok(answer),
                status => return Err(api_error(status, &answer.body)),
            }
        }
    }

    /// Waits for this request's turn (see the module docs), counting the waits.
    async fn acquire(&self) {
        let inner = &self.inner;
        let store = inner.tokens.store();
        let mut waited = false;
        loop {
            match store
                .take_turn(&inner.schedule, &inner.node, inner.period)
                .await
            {
                Ok(Some(turn)) => {
                    inner.nodes_seen.store(turn.nodes.max(1), Ordering::Relaxed);
                    if !turn.wait.is_zero() && !waited {
                        self.count_wait();
                        waited = true;
                    }
                    tokio::time::sleep(turn.wait).await;
                    if turn.reserved {
                        return;
                    }
                    // The schedule was booked too far ahead: ask again now that it is not.
                    continue;
                }
                Ok(None) => return self.wait_for(&inner.limiter).await,
                Err(e) => {
                    let nodes = inner.nodes_seen.load(Ordering::Relaxed).max(1);
                    warn!(error = %e, nodes, "the shared Kommo schedule cannot be reached: this node keeps to its share");
                    let share = self.share(nodes);
                    return self.wait_for(&share).await;
                }
            }
        }
    }

    /// This node's share of the account's budget when `nodes` share it.
    fn share(&self, nodes: u32) -> Arc<DefaultDirectRateLimiter> {
        let mut share = self.inner.share.lock().unwrap();
        match &*share {
            Some((n, limiter)) if *n == nodes => limiter.clone(),
            _ => {
                let made = limiter(share_period(self.inner.settings.max_rps, nodes));
                // Its first permit is spent: a node coming off the shared schedule waits a
                // whole share before its first request, so the switch adds no burst.
                let _ = made.check();
                *share = Some((nodes, made.clone()));
                made
            }
        }
    }

    async fn wait_for(&self, limiter: &DefaultDirectRateLimiter) {
        if limiter.check().is_err() {
            self.count_wait();
            limiter.until_ready().await;
        }
    }

    fn count_wait(&self) {
        self.inner.limiter_waits.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_kommo_limiter_waits_total").increment(1);
    }

    /// Sends one HTTP request; returns the answer and whether its body is not JSON (an HTML
    /// gateway page).
    async fn send_once(
        &self,
        request: &Request,
        token: &str,
    ) -> Result<(Answer, bool), KommoError> {
        let path = request.url.path();
        let label = endpoint_label(&request.method, path);
        let mut builder = self
            .inner
            .http
            .request(request.method.clone(), request.url.clone())
            .timeout(self.inner.settings.timeout)
            .bearer_auth(token)
            .header(
                reqwest::header::ACCEPT,
                "application/hal+json, application/problem+json, application/json",
            );
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        let started = Instant::now();
        let result = async {
            let resp = builder.send().await?;
            let status = resp.status().as_u16();
            let json = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("json"));
            let body = resp.bytes().await?.to_vec();
            Ok::<_, reqwest::Error>((status, json, body))
        }
        .await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok((status, json, body)) => {
                metrics::counter!("conversa_kommo_calls_total", "endpoint" => label.clone(), "status" => status.to_string())
                    .increment(1);
                metrics::histogram!("conversa_kommo_call_seconds", "endpoint" => label)
                    .record(started.elapsed().as_secs_f64());
                info!(
                    method = %request.method,
                    path,
                    status,
                    latency_ms,
                    "kommo api"
                );
                Ok((Answer { status, body }, !json))
            }
            Err(e) => {
                metrics::counter!("conversa_kommo_calls_total", "endpoint" => label, "status" => "network_error")
                    .increment(1);
                let error = e.without_url().to_string();
                warn!(
                    method = %request.method,
                    path,
                    latency_ms,
                    error = %error,
                    "kommo api call failed"
                );
                Err(KommoError::Network(error))
            }
        }
    }

    /// Fails fast while the circuit is open. When the cooldown has passed, lets exactly one
    /// call through as a probe and keeps the others failing until the probe answers (or until
    /// the probe window ends, should the probe be cancelled).
    fn check_circuit(&self, call: &CallState) -> Result<(), KommoError> {
        let mut blocked = self.inner.blocked_until.lock().unwrap();
        let Some(until) = *blocked else {
            return Ok(());
        };
        let now = Instant::now();
        if now < until {
            if call.probe.load(Ordering::Relaxed) {
                return Ok(());
            }
            return Err(KommoError::Blocked {
                retry_in: until - now,
            });
        }
        // This call is the probe: others wait for its answer.
        *blocked = Some(now + self.inner.settings.timeout + Duration::from_secs(5));
        call.probe.store(true, Ordering::Relaxed);
        info!("Kommo block cooldown over: probing with one call");
        Ok(())
    }

    async fn open_circuit(&self, path: &str) {
        let cooldown = self.inner.settings.block_cooldown;
        *self.inner.blocked_until.lock().unwrap() = Some(Instant::now() + cooldown);
        error!(
            alert = "kommo_blocked",
            path,
            cooldown_s = cooldown.as_secs(),
            "Kommo answered 403 (account or IP blocked): no calls until the cooldown ends; \
             if it persists, Kommo support must lift the block"
        );
        // The other nodes stop too (see the module docs).
        let until = unix_ms().saturating_add(cooldown.as_millis() as u64);
        let store = self.inner.tokens.store();
        if let Err(e) = store
            .put_value(&self.inner.block_name, until.to_string().as_bytes())
            .await
        {
            warn!(error = %e, "the Kommo block could not be shared with the other nodes");
        }
    }

    /// Takes a block another node stored (see the module docs): one store read per call, next
    /// to the seven calls a second the account allows at most.
    async fn adopt_shared_block(&self) {
        let inner = &self.inner;
        let stored = match inner.tokens.store().get_value(&inner.block_name).await {
            Ok(v) => v,
            Err(e) => {
                // The schedule's fallback says so already (`acquire`): the node goes by its own.
                tracing::debug!(error = %e, "the shared Kommo block cannot be read");
                return;
            }
        };
        let Some(until) = stored
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u64>().ok())
            .filter(|&until| until > unix_ms())
        else {
            return;
        };
        let until = Instant::now() + Duration::from_millis(until - unix_ms().min(until));
        let mut blocked = inner.blocked_until.lock().unwrap();
        if blocked.is_none_or(|mine| mine < until) {
            if blocked.is_none() {
                warn!(
                    alert = "kommo_blocked",
                    "another node found Kommo blocking this account (403): no calls until the cooldown ends"
                );
            }
            *blocked = Some(until);
        }
    }

    fn close_circuit(&self) {
        let mut blocked = self.inner.blocked_until.lock().unwrap();
        if blocked.is_some() {
            *blocked = None;
            info!("Kommo answered again: block circuit closed");
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_share_keeps_the_nodes_together_within_the_budget() {
        let ms = |d: std::time::Duration| d.as_millis();
        assert_eq!(
            share_period(MAX_RPS, 1),
            Duration::from_secs(1) / 7 + LIMITER_MARGIN
        );
        assert_eq!(ms(share_period(MAX_RPS, 3)), 515);
        assert_eq!(ms(share_period(MAX_RPS, 7)), 1015);
        assert_eq!(ms(share_period(MAX_RPS, 14)), 2015);
        // In any one-second window a node spaced `p` sends ⌊1 s / p⌋ + 1 requests at most.
        for nodes in 1..=7 {
            let p = share_period(MAX_RPS, nodes).as_secs_f64();
            let per_window = (1.0 / p).floor() as u32 + 1;
            assert!(
                per_window * nodes <= MAX_RPS,
                "{nodes} nodes: {per_window} each"
            );
        }
    }

    use super::*;

    #[test]
    fn labels_hide_ids() {
        assert_eq!(
            endpoint_label(&Method::GET, "/api/v4/leads/123/notes"),
            "GET /api/v4/leads/{id}/notes"
        );
        assert_eq!(
            endpoint_label(&Method::POST, "/api/v2/salesbot/run"),
            "POST /api/v2/salesbot/run"
        );
    }

    #[test]
    fn bad_api_url_is_a_config_error() {
        let tokens = TokenManager::new(
            Arc::new(conversa_actors::store::MemoryStore::new()),
            reqwest::Client::new(),
            crate::kommo::oauth::OAuthSettings {
                client_id: String::new(),
                client_secret: String::new(),
                redirect_uri: String::new(),
                base_url: String::new(),
                account_key: "k".into(),
                seed: None,
            },
        );
        assert!(matches!(
            KommoClient::new(KommoSettings::new("not a url"), tokens.clone()),
            Err(KommoError::Config(_))
        ));
        let c = KommoClient::new(
            KommoSettings {
                max_rps: 50,
                ..KommoSettings::new("https://x.kommo.com/api/v4")
            },
            tokens,
        )
        .unwrap();
        assert_eq!(c.settings().max_rps, 7, "capped");
        assert_eq!(c.inner.v4.as_str(), "https://x.kommo.com/api/v4/");
        assert_eq!(
            c.inner.base.join("api/v2/salesbot/run").unwrap().as_str(),
            "https://x.kommo.com/api/v2/salesbot/run"
        );
    }
}
