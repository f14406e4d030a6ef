//! The Kommo REST client: the few v4 (and one v2) calls conversa makes, behind the protections
//! Kommo's limits demand.
//!
//! # What it does
//!
//! [`KommoClient`] reads users, leads, contacts, talks and the account, adds notes, patches lead
//! fields/tags and starts Salesbots (`/api/v2/salesbot/run` — the only way to put a reply into a
//! Kommo-managed WhatsApp conversation, docs/kommo.md). Every call is traced with
//! `tracing::info!` fields `method`, `path`, `status`, `latency_ms` (never a token), and counted
//! per `(endpoint, status)` for metrics.
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
//!   permit, so callers that queued behind a refresh use the new token. `max_rps` is capped at 7;
//!   with several engine nodes on one account, give each `7 / nodes` (the limiter is per
//!   process). Waits are counted ([`KommoClient::limiter_waits`]).
//! * **429** (an HTML page, no `Retry-After`): exponential backoff with jitter (`backon`; 5
//!   attempts, base 500 ms, each delay capped at 8 s), every attempt going through the limiter
//!   again. Still 429 after that → [`KommoError::RateLimited`].
//! * **403 with an HTML body** (nginx page: the account or IP is blocked for abuse): a circuit
//!   opens for `block_cooldown` (5 min by default), an `error!` alert is logged, and every call
//!   fails fast with [`KommoError::Blocked`] without touching Kommo — a retry storm is what gets
//!   an account blocked longer. After the cooldown one probe call goes through; others keep
//!   failing fast until it answers. A 403 with a problem+json body ("Invalid scope") is an
//!   ordinary [`KommoError::Api`] error, not a block.
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
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::error::{KommoError, ValidationError};
use super::oauth::{TokenManager, excerpt};
use conversa_actors::Commitment;

/// Kommo's documented limit (docs/kommo.md, *Limits*).
pub const MAX_RPS: u32 = 7;

/// Cooldown after a 403 block, unless configured otherwise.
pub const DEFAULT_BLOCK_COOLDOWN: Duration = Duration::from_secs(5 * 60);

/// Added to every limiter period (see the module docs).
pub const LIMITER_MARGIN: Duration = Duration::from_millis(15);

/// Safety stop for the users listing (100 000 users): Kommo blocks "unbounded iteration".
const MAX_USER_PAGES: u32 = 400;

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

// ---- models ----

/// A Kommo user (seller).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KommoUser {
    pub id: u64,
    pub name: String,
    pub email: String,
    /// `rights.is_active`.
    pub is_active: bool,
    pub phone: Option<String>,
    /// The user's id in the chat service (amojo).
    pub amojo_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    pub status_id: u64,
    pub pipeline_id: u64,
    /// From `_embedded.contacts` (present with `with_contacts`).
    pub contact_ids: Vec<u64>,
    /// `custom_fields_values` as Kommo sent it (`null` when the lead has none).
    pub custom_fields: Value,
    /// Tag names from `_embedded.tags`.
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    /// Values of the `PHONE` field.
    pub phones: Vec<String>,
    /// The contact's leads (`_embedded.leads`, present with `with=leads`), as Kommo lists them.
    pub lead_ids: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Talk {
    pub id: u64,
    pub contact_id: u64,
    pub chat_id: String,
    /// `entity_id` when `entity_type` is `lead`, else `_embedded.leads[0].id`.
    pub lead_id: Option<u64>,
    pub is_in_work: bool,
}

/// The Kommo account (`GET /api/v4/account`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = KommoAccount)]
pub struct Account {
    pub id: u64,
    pub name: String,
    pub subdomain: String,
}

/// A change to one lead (`PATCH /api/v4/leads/{id}`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LeadPatch {
    /// `(field_id, value)`. A scalar becomes `[{"value": v}]`; an object (e.g.
    /// `{"enum_id": 5}`) becomes `[object]`; an array is used as the `values` list as is.
    pub custom_fields: Vec<(u64, Value)>,
    pub tags_to_add: Vec<String>,
    pub tags_to_delete: Vec<String>,
}

impl LeadPatch {
    /// The JSON body Kommo expects (docs/kommo.md, *Writing*); empty parts are left out.
    pub fn body(&self) -> Value {
        let mut body = serde_json::Map::new();
        if !self.custom_fields.is_empty() {
            let fields: Vec<Value> = self
                .custom_fields
                .iter()
                .map(|(id, v)| {
                    let values = match v {
                        Value::Array(_) => v.clone(),
                        Value::Object(_) => json!([v]),
                        _ => json!([{ "value": v }]),
                    };
                    json!({ "field_id": id, "values": values })
                })
                .collect();
            body.insert("custom_fields_values".into(), Value::Array(fields));
        }
        let tags = |names: &[String]| -> Value {
            Value::Array(names.iter().map(|n| json!({ "name": n })).collect())
        };
        if !self.tags_to_add.is_empty() {
            body.insert("tags_to_add".into(), tags(&self.tags_to_add));
        }
        if !self.tags_to_delete.is_empty() {
            body.insert("tags_to_delete".into(), tags(&self.tags_to_delete));
        }
        Value::Object(body)
    }
}

// ---- wire shapes ----

#[derive(Deserialize)]
struct RawUser {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    rights: Option<RawRights>,
    #[serde(default)]
    phone_number: Option<String>,
    #[serde(default)]
    amojo_id: Option<String>,
}

#[derive(Deserialize)]
struct RawRights {
    #[serde(default)]
    is_active: Option<bool>,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    next: Option<Href>,
}

#[derive(Deserialize)]
struct Href {
    href: String,
}

#[derive(Deserialize)]
struct UsersPage {
    #[serde(default, rename = "_links")]
    links: Links,
    #[serde(default, rename = "_embedded")]
    embedded: Option<UsersEmbedded>,
}

#[derive(Deserialize)]
struct UsersEmbedded {
    #[serde(default)]
    users: Vec<RawUser>,
}

#[derive(Deserialize, Default)]
struct IdRef {
    id: u64,
}

#[derive(Deserialize)]
struct NameRef {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawLead {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    responsible_user_id: Option<u64>,
    #[serde(default)]
    status_id: Option<u64>,
    #[serde(default)]
    pipeline_id: Option<u64>,
    #[serde(default)]
    custom_fields_values: Value,
    #[serde(default, rename = "_embedded")]
    embedded: Option<LeadEmbedded>,
}

#[derive(Deserialize)]
struct LeadEmbedded {
    #[serde(default)]
    contacts: Vec<IdRef>,
    #[serde(default)]
    tags: Vec<NameRef>,
}

#[derive(Deserialize)]
struct RawContact {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    responsible_user_id: Option<u64>,
    #[serde(default)]
    custom_fields_values: Option<Vec<RawField>>,
    #[serde(default, rename = "_embedded")]
    embedded: Option<TalkEmbedded>,
}

#[derive(Deserialize)]
struct RawField {
    #[serde(default)]
    field_code: Option<String>,
    #[serde(default)]
    values: Vec<RawFieldValue>,
}

#[derive(Deserialize)]
struct RawFieldValue {
    #[serde(default)]
    value: Value,
}

#[derive(Deserialize)]
struct RawTalk {
    talk_id: u64,
    #[serde(default)]
    contact_id: Option<u64>,
    #[serde(default)]
    chat_id: Option<String>,
    #[serde(default)]
    entity_id: Option<u64>,
    #[serde(default)]
    entity_type: Option<String>,
    #[serde(default)]
    is_in_work: Option<bool>,
    #[serde(default, rename = "_embedded")]
    embedded: Option<TalkEmbedded>,
}

#[derive(Deserialize)]
struct TalkEmbedded {
    #[serde(default)]
    leads: Vec<IdRef>,
}

#[derive(Deserialize)]
struct NotesResponse {
    #[serde(rename = "_embedded")]
    embedded: NotesEmbedded,
}

#[derive(Deserialize)]
struct NotesEmbedded {
    notes: Vec<IdRef>,
}

#[derive(Deserialize, Default)]
struct Problem {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
    #[serde(default, rename = "validation-errors")]
    validation_errors: Vec<ProblemRequest>,
}

#[derive(Deserialize, Default)]
struct ProblemRequest {
    #[serde(default)]
    errors: Vec<ValidationError>,
}

fn user_from(raw: RawUser) -> KommoUser {
    KommoUser {
        id: raw.id,
        name: raw.name.unwrap_or_default(),
        email: raw.email.unwrap_or_default(),
        is_active: raw.rights.and_then(|r| r.is_active).unwrap_or(false),
        phone: raw.phone_number.filter(|p| !p.is_empty()),
        amojo_id: raw.amojo_id.filter(|p| !p.is_empty()),
    }
}

fn lead_from(raw: RawLead) -> Lead {
    let (contact_ids, tags) = match raw.embedded {
        Some(e) => (
            e.contacts.into_iter().map(|c| c.id).collect(),
            e.tags.into_iter().map(|t| t.name).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    Lead {
        id: raw.id,
        name: raw.name.unwrap_or_default(),
        responsible_user_id: raw.responsible_user_id.unwrap_or(0),
        status_id: raw.status_id.unwrap_or(0),
        pipeline_id: raw.pipeline_id.unwrap_or(0),
        contact_ids,
        custom_fields: raw.custom_fields_values,
        tags,
    }
}

fn contact_from(raw: RawContact) -> Contact {
    let phones = raw
        .custom_fields_values
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f.field_code.as_deref() == Some("PHONE"))
        .flat_map(|f| f.values)
        .filter_map(|v| match v.value {
            Value::String(s) if !s.is_empty() => Some(s),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
        .collect();
    Contact {
        id: raw.id,
        name: raw.name.unwrap_or_default(),
        responsible_user_id: raw.responsible_user_id.unwrap_or(0),
        phones,
        lead_ids: raw
            .embedded
            .map(|e| e.leads.into_iter().map(|l| l.id).collect())
            .unwrap_or_default(),
    }
}

fn talk_from(raw: RawTalk) -> Talk {
    let lead_id = match (raw.entity_type.as_deref(), raw.entity_id) {
        (Some("lead" | "leads"), Some(id)) => Some(id),
        _ => raw
            .embedded
            .and_then(|e| e.leads.into_iter().next())
            .map(|l| l.id),
    };
    Talk {
        id: raw.talk_id,
        contact_id: raw.contact_id.unwrap_or(0),
        chat_id: raw.chat_id.unwrap_or_default(),
        lead_id,
        is_in_work: raw.is_in_work.unwrap_or(false),
    }
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

/// The typed error for a non-2xx answer that is not handled specially.
fn api_error(status: u16, body: &[u8]) -> KommoError {
    if (500..=599).contains(&status) {
        return KommoError::Server {
            status,
            body_excerpt: excerpt(body),
        };
    }
    match serde_json::from_slice::<Problem>(body) {
        Ok(p) => KommoError::Api {
            status,
            title: p.title.unwrap_or_else(|| format!("HTTP {status}")),
            detail: p.detail.unwrap_or_default(),
            validation_errors: p
                .validation_errors
                .into_iter()
                .flat_map(|r| r.errors)
                .collect(),
        },
        Err(_) => KommoError::Api {
            status,
            title: format!("HTTP {status}"),
            detail: excerpt(body),
            validation_errors: Vec::new(),
        },
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, KommoError> {
    serde_json::from_slice(body).map_err(|e| KommoError::Decode(format!("{what}: {e}")))
}

// ---- the limiter registry ----

/// One limiter per account host in the whole process (see the module docs).
static LIMITERS: LazyLock<DashMap<String, Arc<DefaultDirectRateLimiter>>> =
    LazyLock::new(DashMap::new);

fn limiter_for(key: &str, max_rps: u32) -> Arc<DefaultDirectRateLimiter> {
    LIMITERS
        .entry(key.to_owned())
        .or_insert_with(|| {
            let period = Duration::from_secs(1) / max_rps + LIMITER_MARGIN;
            let quota = Quota::with_period(period)
                .expect("non-zero period")
                .allow_burst(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(quota))
        })
        .clone()
}

// ---- the client ----

struct Request {
    method: Method,
    url: Url,
    body: Option<Value>,
    /// For a request that must not be repeated: marked while it may have been carried out.
    in_doubt: Option<Commitment>,
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

struct Answer {
    status: u16,
    body: Vec<u8>,
}

struct Inner {
    settings: KommoSettings,
    http: reqwest::Client,
    tokens: TokenManager,
    v4: Url,
    base: Url,
    limiter: Arc<DefaultDirectRateLimiter>,
    limiter_waits: AtomicU64,
    calls: DashMap<(String, u16), u64>,
    /// `Some(until)`: the circuit is open (a 403 block) until then.
    blocked_until: Mutex<Option<Instant>>,
    /// Turns to have a request in flight ([`KommoSettings::max_concurrency`]).
    turns: tokio::sync::Semaphore,
}

/// The Kommo API client of one account. Cheap to clone (shared state).
#[derive(Clone)]
pub struct KommoClient {
    inner: Arc<Inner>,
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
        let limiter = limiter_for(base.as_str(), max_rps);
        Ok(KommoClient {
            inner: Arc::new(Inner {
                http: tokens.http().clone(),
                tokens,
                v4,
                base,
                limiter,
                limiter_waits: AtomicU64::new(0),
                calls: DashMap::new(),
                blocked_until: Mutex::new(None),
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

    /// Calls made so far by `(endpoint label, status)`; status 0 = no answer (network error).
    /// Labels look like `GET /api/v4/leads/{id}`.
    pub fn calls_snapshot(&self) -> Vec<((String, u16), u64)> {
        let mut v: Vec<_> = self
            .inner
            .calls
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        v.sort();
        v
    }

    /// Whether the 403 circuit is open right now.
    pub fn circuit_open(&self) -> bool {
        self.inner
            .blocked_until
            .lock()
            .unwrap()
            .is_some_and(|until| Instant::now() < until)
    }

    // ---- API methods ----

    /// Every user, all pages (`limit=250`, with phone number and amojo id).
    pub async fn users(&self) -> Result<Vec<KommoUser>, KommoError> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            if page > MAX_USER_PAGES {
                warn!(
                    pages = MAX_USER_PAGES,
                    "stopping the Kommo users listing: too many pages"
                );
                break;
            }
            let mut url = self.v4("users")?;
            url.query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("limit", "250")
                .append_pair("with", "phone_number,amojo_id");
            let Some(body) = self.get(url).await? else {
                break;
            };
            let parsed: UsersPage = decode("users page", &body)?;
            out.extend(
                parsed
                    .embedded
                    .map(|e| e.users)
                    .unwrap_or_default()
                    .into_iter()
                    .map(user_from),
            );
            // Follow `_links.next`: its `page` (never its host: the href may name another
            // domain of the same account), or the next number.
            let Some(next) = parsed.links.next else { break };
            page = Url::parse(&next.href)
                .ok()
                .and_then(|u| {
                    u.query_pairs()
                        .find(|(k, _)| k == "page")
                        .and_then(|(_, v)| v.parse::<u32>().ok())
                })
                .filter(|n| *n > page)
                .unwrap_or(page + 1);
        }
        Ok(out)
    }

    /// One lead (`with=contacts` when asked); `None` when Kommo answers 204.
    pub async fn lead(&self, id: u64, with_contacts: bool) -> Result<Option<Lead>, KommoError> {
        let mut url = self.v4(&format!("leads/{id}"))?;
        if with_contacts {
            url.query_pairs_mut().append_pair("with", "contacts");
        }
        match self.get(url).await? {
            None => Ok(None),
            Some(body) => Ok(Some(lead_from(decode("lead", &body)?))),
        }
    }

    /// One contact with its phones and leads (`with=leads`); `None` when Kommo answers 204.
    pub async fn contact(&self, id: u64) -> Result<Option<Contact>, KommoError> {
        let mut url = self.v4(&format!("contacts/{id}"))?;
        url.query_pairs_mut().append_pair("with", "leads");
        match self.get(url).await? {
            None => Ok(None),
            Some(body) => Ok(Some(contact_from(decode("contact", &body)?))),
        }
    }

    /// One talk; `None` when Kommo answers 204 or 404 (the talks API documents 404).
    pub async fn talk(&self, id: u64) -> Result<Option<Talk>, KommoError> {
        let url = self.v4(&format!("talks/{id}"))?;
        match self.get(url).await {
            Ok(None) | Err(KommoError::Api { status: 404, .. }) => Ok(None),
            Ok(Some(body)) => Ok(Some(talk_from(decode("talk", &body)?))),
            Err(e) => Err(e),
        }
    }

    /// Adds a common (text) note to a lead and returns the note id.
    pub async fn add_note(&self, lead_id: u64, text: &str) -> Result<u64, KommoError> {
        let url = self.v4(&format!("leads/{lead_id}/notes"))?;
        let body = json!([{ "note_type": "common", "params": { "text": text } }]);
        let answer = self.send(Method::POST, url, Some(body)).await?;
        let parsed: NotesResponse = decode("notes response", &answer.body)?;
        parsed
            .embedded
            .notes
            .first()
            .map(|n| n.id)
            .ok_or_else(|| KommoError::Decode("notes response without a note".into()))
    }

    /// Sets custom fields and adds/removes tags on a lead.
    pub async fn patch_lead(&self, lead_id: u64, patch: &LeadPatch) -> Result<(), KommoError> {
        let url = self.v4(&format!("leads/{lead_id}"))?;
        self.send(Method::PATCH, url, Some(patch.body())).await?;
        Ok(())
    }

    /// Starts Salesbot `bot_id` on a lead (`POST /api/v2/salesbot/run`, 202). A 5xx or a
    /// timeout leaves it unknown whether the bot ran: not retried here (see the module docs).
    /// `in_doubt` is marked whenever a run request is out and cleared when Kommo's answer
    /// proves the bot did not run (429, 401), so a caller that gives up midway (a timeout)
    /// knows whether trying again could run the bot twice.
    pub async fn run_salesbot(
        &self,
        bot_id: u64,
        lead_id: u64,
        in_doubt: &Commitment,
    ) -> Result<(), KommoError> {
        let url = self
            .inner
            .base
            .join("api/v2/salesbot/run")
            .map_err(|e| KommoError::Config(e.to_string()))?;
        let body = json!([{ "bot_id": bot_id, "entity_id": lead_id, "entity_type": 2 }]);
        let request = Request {
            method: Method::POST,
            url,
            body: Some(body),
            in_doubt: Some(in_doubt.clone()),
        };
        self.send_request(request).await?;
        Ok(())
    }

    /// The account this client talks to.
    pub async fn account(&self) -> Result<Account, KommoError> {
        let url = self.v4("account")?;
        match self.get(url).await? {
            Some(body) => decode("account", &body),
            None => Err(KommoError::Decode("account: empty answer".into())),
        }
    }

    // ---- plumbing ----

    fn v4(&self, path: &str) -> Result<Url, KommoError> {
        self.inner
            .v4
            .join(path)
            .map_err(|e| KommoError::Config(e.to_string()))
    }

    /// GET: `None` on 204 (or an empty 2xx body).
    async fn get(&self, url: Url) -> Result<Option<Vec<u8>>, KommoError> {
        let answer = self.send(Method::GET, url, None).await?;
        if answer.status == 204 || answer.body.is_empty() {
            Ok(None)
        } else {
            Ok(Some(answer.body))
        }
    }

    /// One logical call: the circuit, then attempts with 429 backoff (see the module docs).
    async fn send(
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

    async fn send_request(&self, request: Request) -> Result<Answer, KommoError> {
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
            self.check_circuit(call)?;
            self.acquire().await;
            self.check_circuit(call)?;
            let token = match self.inner.tokens.access_token().await {
                Ok(t) => t,
                Err(KommoError::Blocked { .. }) => {
                    self.open_circuit("/oauth2/access_token");
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
                self.open_circuit(request.url.path());
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

    /// Waits for a limiter permit, counting the waits.
    async fn acquire(&self) {
        if self.inner.limiter.check().is_err() {
            self.inner.limiter_waits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("kommo_limiter_waits_total").increment(1);
            self.inner.limiter.until_ready().await;
        }
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
                metrics::counter!("kommo_calls_total", "endpoint" => label.clone(), "status" => status.to_string())
                    .increment(1);
                metrics::histogram!("kommo_call_seconds", "endpoint" => label.clone())
                    .record(started.elapsed().as_secs_f64());
                *self.inner.calls.entry((label, status)).or_insert(0) += 1;
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
                metrics::counter!("kommo_calls_total", "endpoint" => label.clone(), "status" => "network_error")
                    .increment(1);
                *self.inner.calls.entry((label, 0)).or_insert(0) += 1;
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

    fn open_circuit(&self, path: &str) {
        let cooldown = self.inner.settings.block_cooldown;
        *self.inner.blocked_until.lock().unwrap() = Some(Instant::now() + cooldown);
        error!(
            alert = "kommo_blocked",
            path,
            cooldown_s = cooldown.as_secs(),
            "Kommo answered 403 (account or IP blocked): no calls until the cooldown ends; \
             if it persists, Kommo support must lift the block"
        );
    }

    fn close_circuit(&self) {
        let mut blocked = self.inner.blocked_until.lock().unwrap();
        if blocked.is_some() {
            *blocked = None;
            info!("Kommo answered again: block circuit closed");
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn patch_body_shapes() {
        let patch = LeadPatch {
            custom_fields: vec![
                (3, json!("text")),
                (4, json!({"enum_id": 7})),
                (5, json!([{"value": true}])),
            ],
            tags_to_add: vec!["ia-off".into()],
            tags_to_delete: vec![],
        };
        assert_eq!(
            patch.body(),
            json!({
                "custom_fields_values": [
                    {"field_id": 3, "values": [{"value": "text"}]},
                    {"field_id": 4, "values": [{"enum_id": 7}]},
                    {"field_id": 5, "values": [{"value": true}]},
                ],
                "tags_to_add": [{"name": "ia-off"}],
            })
        );
        assert_eq!(LeadPatch::default().body(), json!({}));
    }

    #[test]
    fn problem_json_with_validation_errors() {
        // Verbatim from docs/kommo.md, *Error bodies*.
        let body = br#"{"validation-errors":[{"request_id":"0","errors":[{"code":"NotSupportedChoice","path":"custom_fields_values.0.field_id","detail":"The value you selected is not a valid choice."}]}],"title":"Bad Request","type":"https://httpstatus.es/400","status":400,"detail":"Request validation failed"}"#;
        match api_error(400, body) {
            KommoError::Api {
                status,
                title,
                detail,
                validation_errors,
            } => {
                assert_eq!((status, title.as_str()), (400, "Bad Request"));
                assert_eq!(detail, "Request validation failed");
                assert_eq!(
                    validation_errors,
                    vec![ValidationError {
                        code: "NotSupportedChoice".into(),
                        path: "custom_fields_values.0.field_id".into(),
                        detail: "The value you selected is not a valid choice.".into(),
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            api_error(502, b"<html>bad gateway</html>"),
            KommoError::Server { status: 502, .. }
        ));
        assert!(matches!(
            api_error(404, b"<html>nope</html>"),
            KommoError::Api { status: 404, .. }
        ));
    }

    #[test]
    fn doc_samples_parse() {
        // docs/kommo.md, *Leads, contacts, talks*.
        let lead: RawLead = serde_json::from_str(
            r#"{"id":3912171,"name":"Example","price":12,"responsible_user_id":504141,"group_id":0,"status_id":143,"pipeline_id":3104455,"custom_fields_values":null,"_embedded":{"tags":[{"id":100667,"name":"тест","color":null}],"companies":[{"id":10971463}],"contacts":[{"id":10971465,"is_main":true}]}}"#,
        )
        .unwrap();
        let lead = lead_from(lead);
        assert_eq!(lead.contact_ids, vec![10971465]);
        assert_eq!(lead.tags, vec!["тест".to_owned()]);
        assert_eq!(lead.custom_fields, Value::Null);
        assert_eq!(
            (lead.responsible_user_id, lead.status_id, lead.pipeline_id),
            (504141, 143, 3104455)
        );

        let contact: RawContact = serde_json::from_str(
            r#"{"id":3,"name":"Иван Иванов","responsible_user_id":504141,"custom_fields_values":[{"field_id":3,"field_name":"Телефон","field_code":"PHONE","field_type":"multitext","values":[{"value":"+79123","enum_id":1,"enum":"WORK"}]}]}"#,
        )
        .unwrap();
        assert_eq!(contact_from(contact).phones, vec!["+79123".to_owned()]);

        let talk: RawTalk = serde_json::from_str(
            r#"{"talk_id":117,"created_at":1631018291,"updated_at":1631035929,"rate":0,"contact_id":3372695,"chat_id":"88278e98-2b8d-4ae2-a5f0-bfab511cd621","entity_id":667999637,"entity_type":"lead","is_in_work":true,"is_read":true,"origin":"telegram","missed_at":null,"account_id":17029541,"_embedded":{"contacts":[{"id":3372695}],"leads":[{"id":667999637}],"customers":[]}}"#,
        )
        .unwrap();
        assert_eq!(
            talk_from(talk),
            Talk {
                id: 117,
                contact_id: 3372695,
                chat_id: "88278e98-2b8d-4ae2-a5f0-bfab511cd621".into(),
                lead_id: Some(667999637),
                is_in_work: true,
            }
        );

        let users: UsersPage = serde_json::from_str(
            r#"{"_total_items":2,"_page":1,"_page_count":1,"_links":{"self":{"href":"https://example.amocrm.ru/api/v4/users/?with=role%2Cgroup"}},"_embedded":{"users":[{"id":123123,"name":"U","email":"example2@mail.com","lang":"en","rights":{"status_rights":null,"is_admin":false,"is_free":false,"is_active":true,"group_id":null,"role_id":null}}]}}"#,
        )
        .unwrap();
        assert!(users.links.next.is_none());
        let u = user_from(users.embedded.unwrap().users.remove(0));
        assert!(u.is_active);
        assert_eq!(u.phone, None);
    }

    #[test]
    fn bad_api_url_is_a_config_error() {
        let tokens = TokenManager::new(
            Arc::new(crate::store::MemoryStore::new()),
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
