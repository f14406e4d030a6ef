//! The sellers directory (the original system's "vendedores dinâmicos"): who may hold a
//! conversation, how a seller's own WhatsApp contact is recognised, and who is responsible for a
//! conversation.
//!
//! Three kinds of [`Seller`], listed together by [`SellerDirectory::all`]:
//! * **real** ([`Source::Real`]) — the active users of the Kommo account, read through a
//!   [`UserSource`] (the Kommo client implements it; this module does not depend on it). The list
//!   is cached for [`DirectorySettings::ttl`]; once stale it is still served at once while one
//!   background refresh (single-flight: however many readers notice, one call to the source)
//!   fetches a new one. [`SellerDirectory::sync`] forces a refresh. The last good list is
//!   persisted under the store value `sellers:real`, so a restart while Kommo is unreachable still
//!   knows the sellers. Ids are `kommo-<user id>`.
//! * **fictitious** ([`Source::Fictitious`]) — from configuration, for tests and demos
//!   (ids `ficticio-1`, `ficticio-2`, ... unless configured).
//! * **custom** ([`Source::Custom`]) — added through the API, persisted as one JSON list under
//!   the store value `sellers:custom`; ids `custom-<n>`, `n` one more than the largest stored.
//!
//! The "dynamic" sellers (`dinâmicos`) are real + custom.
//!
//! Who is responsible for a conversation ([`SellerDirectory::responsible`]) follows the original
//! order: the seller holding the conversation, else a contact-level assignment (store value
//! `sellers:contact:<contact id>` = seller id, see [`SellerDirectory::assign_contact`]), else the
//! Kommo user responsible for the lead, mapped to a seller. Lead → user and talk → contact
//! answers from Kommo are cached for the same TTL.
//!
//! Several nodes on one store: each node caches the real list itself (each refreshes from Kommo)
//! and re-reads the custom list from the store at least every 10 s. Adding a custom seller is a
//! read-modify-write of `sellers:custom`, serialised inside a process; the `Store` trait has no
//! compare-and-set for named values, so two nodes adding a seller in the same instant could lose
//! one. Adding sellers is a rare operator action, so this is accepted rather than engineered away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conversa_actors::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

/// Store value holding the last good list of real sellers (JSON list of [`Seller`]).
pub const REAL_KEY: &str = "sellers:real";
/// Store value holding the custom sellers (JSON list of [`Seller`]).
pub const CUSTOM_KEY: &str = "sellers:custom";

/// Store value holding the id of the seller assigned to a contact.
pub fn contact_key(contact_id: u64) -> String {
    format!("sellers:contact:{contact_id}")
}

/// A safety net around every call to a [`UserSource`] or [`LeadSource`] (whose own timeouts
/// should be shorter), so a hung Kommo never holds readers forever.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed refresh of the real sellers, the stale list is served this long (or the TTL,
/// if shorter) before the next attempt, so a Kommo outage is not hammered.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// The custom list is re-read from the store at least this often (or every TTL, if shorter),
/// so sellers added on another node show up.
const CUSTOM_TTL: Duration = Duration::from_secs(10);
/// Cached lead and talk lookups kept at most (expired ones are dropped first).
const LOOKUP_CACHE_MAX: usize = 10_000;
/// Longest accepted seller name, in characters.
const NAME_MAX: usize = 120;

/// A seller of the directory, as every endpoint shows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[schema(example = json!({"id": "custom-1", "name": "Ana Souza", "kommo_user_id": null,
    "contact_id": 99999, "phone": null, "areas": ["Previdenciário"], "active": true,
    "source": "custom"}))]
pub struct Seller {
    /// `kommo-<user id>`, `ficticio-<n>` or `custom-<n>`. Empty in configuration = assigned.
    #[serde(default)]
    #[schema(required = true)]
    pub id: String,
    pub name: String,
    /// The seller's Kommo user, when they have one.
    #[serde(default)]
    pub kommo_user_id: Option<u64>,
    /// The seller's own WhatsApp contact in Kommo, so their commands can be recognised.
    #[serde(default)]
    pub contact_id: Option<u64>,
    /// Digits only.
    #[serde(default)]
    pub phone: Option<String>,
    /// Practice areas ("áreas de atuação").
    #[serde(default)]
    #[schema(required = true)]
    pub areas: Vec<String>,
    #[serde(default = "yes")]
    #[schema(required = true)]
    pub active: bool,
    pub source: Source,
    /// A Kommo user's id in the chat service (amojo): the `author[id]` of the messages they
    /// write in a customer's chat, so a takeover by chat names the same seller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub amojo_id: Option<String>,
}

/// A Kommo-synced seller's own WhatsApp (`contact_id` and/or `phone`), attached by
/// configuration (`SELLER_WHATSAPP`) or `POST /vendedores/{id}/whatsapp`, so their commands are
/// recognised; kept across syncs and restarts (store value [`WHATSAPP_KEY`]).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WhatsApp {
    #[serde(default)]
    pub contact_id: Option<u64>,
    /// Digits only.
    #[serde(default)]
    pub phone: Option<String>,
}

/// Store value holding the WhatsApp attached to real sellers (JSON map: Kommo user id → it).
pub const WHATSAPP_KEY: &str = "sellers:whatsapp";

/// Kommo user id → the WhatsApp attached to that seller.
type WhatsAppMap = HashMap<u64, WhatsApp>;

fn yes() -> bool {
    true
}

/// Where a seller comes from: an active Kommo user, configuration, or the API.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = SellerSource)]
pub enum Source {
    /// An active Kommo user.
    Real,
    /// From configuration, for tests and demos (`ficticio`, the original's word).
    #[serde(rename = "ficticio")]
    Fictitious,
    /// Added through the API.
    Custom,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Real => "real",
            Source::Fictitious => "ficticio",
            Source::Custom => "custom",
        }
    }
}

/// A Kommo user as the directory needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub kommo_user_id: u64,
    pub name: String,
    pub phone: Option<String>,
    pub active: bool,
    /// The user's id in the chat service (`with=amojo_id`).
    pub amojo_id: Option<String>,
}

/// Where real sellers come from (the Kommo users API).
#[async_trait]
pub trait UserSource: Send + Sync + 'static {
    /// The account's users; inactive ones may be included (they are filtered out).
    async fn active_users(&self) -> Result<Vec<UserRecord>, String>;
}

/// What the directory asks Kommo about leads and talks.
#[async_trait]
pub trait LeadSource: Send + Sync + 'static {
    /// The Kommo user responsible for the lead (`None`: no such lead, or nobody responsible).
    async fn responsible_user(&self, lead_id: u64) -> Result<Option<u64>, String>;
    /// The contact a talk (conversation) belongs to (`None`: no such talk).
    async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, String>;
    /// The Kommo user responsible for the contact (`None`: no such contact, or nobody).
    async fn contact_user(&self, _contact_id: u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
    /// The lead a talk belongs to (`None`: no such talk, or not on a lead).
    async fn talk_lead(&self, _talk_id: u64) -> Result<Option<u64>, String> {
        Ok(None)
    }
}

/// How the directory is set up.
#[derive(Clone, Debug)]
pub struct DirectorySettings {
    /// How long the real sellers and the lead/talk lookups are fresh (default 5 minutes).
    pub ttl: Duration,
    /// Fictitious sellers, from configuration. Their source is forced to `ficticio`; an empty id
    /// becomes `ficticio-<position, from 1>`.
    pub fictitious: Vec<Seller>,
    /// Practice areas per Kommo user id, for the real sellers (Kommo does not know them).
    pub real_areas: HashMap<u64, Vec<String>>,
    /// WhatsApp per Kommo user id, from configuration; what the API stored wins.
    pub real_whatsapp: HashMap<u64, WhatsApp>,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            fictitious: Vec::new(),
            real_areas: HashMap::new(),
            real_whatsapp: HashMap::new(),
        }
    }
}

/// A custom seller to add ([`SellerDirectory::add_custom`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct NewSeller {
    pub name: String,
    #[serde(default)]
    pub contact_id: Option<u64>,
    /// Any formatting; kept as digits.
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub areas: Vec<String>,
    #[serde(default)]
    pub kommo_user_id: Option<u64>,
}

/// How the responsible seller was found ([`SellerDirectory::responsible`]): the seller holding
/// the conversation, the contact's assignment (or its responsible Kommo user), or the lead's
/// responsible Kommo user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FoundBy {
    Conversation,
    Contact,
    Lead,
}

impl FoundBy {
    /// The name in JSON answers.
    pub fn as_str(self) -> &'static str {
        match self {
            FoundBy::Conversation => "conversation",
            FoundBy::Contact => "contact",
            FoundBy::Lead => "lead",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    /// Bad input, naming the offending field.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The value of `field` already belongs to seller `seller_id`.
    #[error("{field} {value} already belongs to seller {seller_id}")]
    Duplicate {
        field: &'static str,
        value: String,
        seller_id: String,
    },
    /// No such seller.
    #[error("seller {0:?} not found")]
    NotFound(String),
    /// The store cannot be reached.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// A stored sellers value cannot be read.
    #[error("stored sellers data corrupt: {0}")]
    Corrupt(String),
    /// No [`UserSource`] / [`LeadSource`] was configured.
    #[error("Kommo is not configured: real sellers and lead owners cannot be read")]
    NotConfigured,
    /// Kommo (the source) failed or did not answer.
    #[error("Kommo unavailable: {0}")]
    Upstream(String),
}

impl From<StoreError> for DirectoryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => DirectoryError::Corrupt(m),
            other => DirectoryError::StoreUnavailable(other.to_string()),
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> DirectoryError {
    DirectoryError::Invalid {
        field,
        message: message.into(),
    }
}

/// Keeps only the digits of a phone number (`"+55 (11) 98765-4321"` → `"5511987654321"`).
pub fn normalize_phone(raw: &str) -> String {
    raw.chars().filter(char::is_ascii_digit).collect()
}

/// Whether two digit-only phones are the same number: equal, or one is the other with a
/// country code in front (the shorter must keep at least area code + number, 10 digits).
pub fn phones_match(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short == long || (short.len() >= 10 && long.ends_with(short))
}

/// The directory. Cheap to share (`Arc` it once); every method takes `&self`.
pub struct SellerDirectory {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    users: Option<Arc<dyn UserSource>>,
    leads: Option<Arc<dyn LeadSource>>,
    ttl: Duration,
    fictitious: Vec<Seller>,
    real_areas: HashMap<u64, Vec<String>>,
    real_whatsapp: HashMap<u64, WhatsApp>,
    /// What the store holds under [`WHATSAPP_KEY`], and when it was read.
    whatsapp: Mutex<Option<(Arc<WhatsAppMap>, Instant)>>,
    whatsapp_write: tokio::sync::Mutex<()>,
    real: Mutex<RealCache>,
    /// Set while a background refresh is scheduled or running (single-flight).
    refreshing: AtomicBool,
    /// Serialises every refresh of the real list (background, forced, first load).
    refresh_lock: tokio::sync::Mutex<()>,
    custom: Mutex<CustomCache>,
    /// Serialises the read-modify-write of the custom list.
    custom_write: tokio::sync::Mutex<()>,
    lead_users: TtlMap,
    talk_contacts: TtlMap,
    contact_users: TtlMap,
    talk_leads: TtlMap,
}

#[derive(Default)]
struct RealCache {
    /// `None` until a list was loaded (from the source or the store).
    sellers: Option<Arc<Vec<Seller>>>,
    fresh_until: Option<Instant>,
    /// What the store holds under [`REAL_KEY`], as far as this process knows.
    persisted: Option<Arc<Vec<Seller>>>,
}

#[derive(Default)]
struct CustomCache {
    list: Option<(Arc<Vec<Seller>>, Instant)>,
    /// Bumped by every write, so a read that started before it does not install older data.
    generation: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears the single-flight flag when the background refresh ends, even by a panic.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A small id → optional id map whose entries expire.
struct TtlMap {
    ttl: Duration,
    map: Mutex<HashMap<u64, (Option<u64>, Instant)>>,
}

impl TtlMap {
    fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: u64) -> Option<Option<u64>> {
        let map = lock(&self.map);
        let (value, at) = map.get(&key)?;
        (at.elapsed() < self.ttl).then_some(*value)
    }

    fn insert(&self, key: u64, value: Option<u64>) {
        let mut map = lock(&self.map);
        if map.len() >= LOOKUP_CACHE_MAX {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= LOOKUP_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(key, (value, Instant::now()));
    }
}

/// A Kommo id looked up through `cache` (a 0 or missing answer is cached as `None` too).
async fn cached<F>(
    cache: &TtlMap,
    key: u64,
    ask: impl FnOnce() -> F,
) -> Result<Option<u64>, DirectoryError>
where
    F: std::future::Future<Output = Result<Option<u64>, DirectoryError>>,
{
    if let Some(hit) = cache.get(key) {
        return Ok(hit);
    }
    let found = ask().await?.filter(|id| *id > 0);
    cache.insert(key, found);
    Ok(found)
}

async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, DirectoryError> {
    match tokio::time::timeout(SOURCE_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DirectoryError::Upstream(format!("{what}: {e}"))),
        Err(_) => Err(DirectoryError::Upstream(format!(
            "{what}: no answer in {}s",
            SOURCE_TIMEOUT.as_secs()
        ))),
    }
}

impl Inner {
    /// The cached real list and whether it is stale.
    fn real_snapshot(&self) -> Option<(Arc<Vec<Seller>>, bool)> {
        let cache = lock(&self.real);
        let list = cache.sellers.clone()?;
        let stale = cache.fresh_until.is_none_or(|t| Instant::now() >= t);
        Some((list, stale))
    }

    fn retry_delay(&self) -> Duration {
        self.ttl.min(RETRY_AFTER_FAILURE)
    }

    /// Makes `list` the current real list, fresh for `fresh_for`.
    fn install_real(
        &self,
        list: Vec<Seller>,
        fresh_for: Duration,
        from_store: bool,
    ) -> Arc<Vec<Seller>> {
        let list = Arc::new(list);
        let mut cache = lock(&self.real);
        cache.sellers = Some(list.clone());
        cache.fresh_until = Some(Instant::now() + fresh_for);
        if from_store {
            cache.persisted = Some(list.clone());
        }
        list
    }

    /// Serves the current list a while longer after a failed refresh.
    fn postpone(&self) {
        lock(&self.real).fresh_until = Some(Instant::now() + self.retry_delay());
    }

    fn real_from_records(&self, records: Vec<UserRecord>) -> Vec<Seller> {
        let mut sellers: Vec<Seller> = records
            .into_iter()
            .filter(|u| u.active && u.kommo_user_id > 0)
            .map(|u| Seller {
                id: format!("kommo-{}", u.kommo_user_id),
                name: u.name.trim().to_owned(),
                kommo_user_id: Some(u.kommo_user_id),
                contact_id: None,
                phone: u
                    .phone
                    .as_deref()
                    .map(normalize_phone)
                    .filter(|p| !p.is_empty()),
                areas: self
                    .real_areas
                    .get(&u.kommo_user_id)
                    .cloned()
                    .unwrap_or_default(),
                active: true,
                source: Source::Real,
                amojo_id: u.amojo_id.filter(|a| !a.trim().is_empty()),
            })
            .collect();
        sellers.sort_by_key(|s| s.kommo_user_id);
        sellers.dedup_by_key(|s| s.kommo_user_id);
        sellers
    }

    /// The last good real list from the store, with the configured areas applied.
    async fn restore_real(&self) -> Result<Vec<Seller>, DirectoryError> {
        let Some(bytes) = self.store.get_value(REAL_KEY).await? else {
            return Ok(Vec::new());
        };
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        let mut list: Vec<Seller> = match serde_json::from_slice(&bytes) {
            Ok(list) => list,
            Err(e) => {
                // Only a cache of Kommo's answer: the next sync rewrites it.
                warn!(error = %e, key = REAL_KEY, "ignoring unreadable stored real sellers");
                return Ok(Vec::new());
            }
        };
        for seller in &mut list {
            seller.source = Source::Real;
            if let Some(areas) = seller.kommo_user_id.and_then(|u| self.real_areas.get(&u)) {
                seller.areas = areas.clone();
            }
        }
        Ok(list)
    }

    /// Stores `list` as the last good one unless the store already holds it. Best effort: the
    /// list in memory is current either way, and the next refresh tries again.
    async fn persist_real(&self, list: &Arc<Vec<Seller>>) {
        let unchanged = lock(&self.real)
            .persisted
            .as_ref()
            .is_some_and(|p| p == list);
        if unchanged {
            return;
        }
        let bytes = match serde_json::to_vec(list.as_ref()) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot serialise the real sellers");
                return;
            }
        };
        match self.store.put_value(REAL_KEY, &bytes).await {
            Ok(()) => lock(&self.real).persisted = Some(list.clone()),
            Err(e) => warn!(error = %e, "cannot persist the real sellers; will retry"),
        }
    }

    /// Refreshes the real list: from the source when there is one (keeping the current list on
    /// failure), else from the store. The caller holds `refresh_lock`.
    async fn refresh(&self) -> Result<Arc<Vec<Seller>>, DirectoryError> {
        match &self.users {
            Some(users) => match call("users", users.active_users()).await {
                Ok(records) => {
                    let list = self.install_real(self.real_from_records(records), self.ttl, false);
                    self.persist_real(&list).await;
                    debug!(count = list.len(), "real sellers refreshed from Kommo");
                    Ok(list)
                }
                Err(e) => {
                    self.postpone();
                    Err(e)
                }
            },
            None => match self.restore_real().await {
                Ok(list) => Ok(self.install_real(list, self.ttl, true)),
                Err(e) => {
                    self.postpone();
                    Err(e)
                }
            },
        }
    }

    async fn read_custom(&self) -> Result<Vec<Seller>, DirectoryError> {
        match self.store.get_value(CUSTOM_KEY).await? {
            None => Ok(Vec::new()),
            Some(bytes) if bytes.is_empty() => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DirectoryError::Corrupt(format!("{CUSTOM_KEY}: {e}"))),
        }
    }

    fn install_custom(&self, list: Arc<Vec<Seller>>, read_at_generation: Option<u64>) {
        let mut cache = lock(&self.custom);
        match read_at_generation {
            // A read: install only if no write happened meanwhile.
            Some(generation) if generation != cache.generation => {}
            Some(_) => cache.list = Some((list, Instant::now())),
            None => {
                cache.generation += 1;
                cache.list = Some((list, Instant::now()));
            }
        }
    }
}

/// The three lists, for lookups.
struct Lists {
    real: Arc<Vec<Seller>>,
    custom: Arc<Vec<Seller>>,
}

impl SellerDirectory {
    pub fn new(
        store: Arc<dyn Store>,
        users: Option<Arc<dyn UserSource>>,
        leads: Option<Arc<dyn LeadSource>>,
        settings: DirectorySettings,
    ) -> Self {
        let ttl = settings.ttl;
        let fictitious = settings
            .fictitious
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                if s.id.trim().is_empty() {
                    s.id = format!("ficticio-{}", i + 1);
                }
                s.source = Source::Fictitious;
                s.phone = s
                    .phone
                    .as_deref()
                    .map(normalize_phone)
                    .filter(|p| !p.is_empty());
                s.areas = clean_areas(s.areas);
                s
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                store,
                users,
                leads,
                ttl,
                fictitious,
                real_areas: settings.real_areas,
                real_whatsapp: settings.real_whatsapp,
                whatsapp: Mutex::new(None),
                whatsapp_write: tokio::sync::Mutex::new(()),
                real: Mutex::new(RealCache::default()),
                refreshing: AtomicBool::new(false),
                refresh_lock: tokio::sync::Mutex::new(()),
                custom: Mutex::new(CustomCache::default()),
                custom_write: tokio::sync::Mutex::new(()),
                lead_users: TtlMap::new(ttl),
                talk_contacts: TtlMap::new(ttl),
                contact_users: TtlMap::new(ttl),
                talk_leads: TtlMap::new(ttl),
            }),
        }
    }

    /// Whether a [`UserSource`] (Kommo) is configured.
    pub fn has_user_source(&self) -> bool {
        self.inner.users.is_some()
    }

    /// Every seller: real, then fictitious, then custom.
    pub async fn all(&self) -> Result<Vec<Seller>, DirectoryError> {
        let lists = self.lists().await?;
        Ok(lists
            .real
            .iter()
            .chain(&self.inner.fictitious)
            .chain(lists.custom.iter())
            .cloned()
            .collect())
    }

    /// The active Kommo users (possibly a stale list while a refresh runs in the background).
    pub async fn real(&self) -> Result<Vec<Seller>, DirectoryError> {
        Ok(self.real_list().await?.as_ref().clone())
    }

    /// The sellers from configuration.
    pub fn fictitious(&self) -> Vec<Seller> {
        self.inner.fictitious.clone()
    }

    /// The sellers added through the API.
    pub async fn custom(&self) -> Result<Vec<Seller>, DirectoryError> {
        Ok(self.custom_list().await?.as_ref().clone())
    }

    /// The "dinâmicos": real + custom.
    pub async fn dynamic(&self) -> Result<Vec<Seller>, DirectoryError> {
        let lists = self.lists().await?;
        Ok(lists
            .real
            .iter()
            .chain(lists.custom.iter())
            .cloned()
            .collect())
    }

    /// Reads the active Kommo users now and returns how many real sellers there are.
    /// `NotConfigured` without a [`UserSource`]; `Upstream` when Kommo fails (the previous list
    /// stays in use).
    pub async fn sync(&self) -> Result<usize, DirectoryError> {
        if self.inner.users.is_none() {
            return Err(DirectoryError::NotConfigured);
        }
        let _refresh = self.inner.refresh_lock.lock().await;
        let list = self.inner.refresh().await?;
        info!(count = list.len(), "real sellers synchronised from Kommo");
        Ok(list.len())
    }

    /// Validates and stores a custom seller; returns it with its new id.
    pub async fn add_custom(&self, new: NewSeller) -> Result<Seller, DirectoryError> {
        let mut seller = validate(new)?;
        let _write = self.inner.custom_write.lock().await;
        // The store, not the cache: another node may have added one meanwhile.
        let mut custom = self.inner.read_custom().await?;
        let real = self.real_list().await?;
        check_duplicates(
            &seller,
            &custom,
            real.iter().chain(&self.inner.fictitious).chain(&custom),
        )?;
        let n = custom
            .iter()
            .filter_map(|s| s.id.strip_prefix("custom-")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        seller.id = format!("custom-{n}");
        custom.push(seller.clone());
        let bytes = serde_json::to_vec(&custom)
            .map_err(|e| DirectoryError::Corrupt(format!("cannot serialise: {e}")))?;
        self.inner.store.put_value(CUSTOM_KEY, &bytes).await?;
        self.inner.install_custom(Arc::new(custom), None);
        info!(id = %seller.id, name = %seller.name, "custom seller added");
        Ok(seller)
    }

    /// The seller whose own WhatsApp contact this is (custom first, then real, then fictitious).
    pub async fn by_contact_id(&self, contact_id: u64) -> Result<Option<Seller>, DirectoryError> {
        if contact_id == 0 {
            return Ok(None);
        }
        let lists = self.lists().await?;
        Ok(self.find(&lists, false, |s| s.contact_id == Some(contact_id)))
    }

    /// The seller with this phone number (any formatting; a country code prefix may differ).
    pub async fn by_phone(&self, phone: &str) -> Result<Option<Seller>, DirectoryError> {
        let digits = normalize_phone(phone);
        if digits.is_empty() {
            return Ok(None);
        }
        let lists = self.lists().await?;
        Ok(self.find(&lists, false, |s| {
            s.phone.as_deref().is_some_and(|p| phones_match(p, &digits))
        }))
    }

    /// The seller with this id; a bare number is taken as a Kommo user id when no id matches.
    pub async fn by_id(&self, id: &str) -> Result<Option<Seller>, DirectoryError> {
        let id = id.trim();
        if id.is_empty() {
            return Ok(None);
        }
        let lists = self.lists().await?;
        if let Some(found) = self.find(&lists, false, |s| s.id == id) {
            return Ok(Some(found));
        }
        match id.parse::<u64>() {
            Ok(user) if user > 0 => Ok(self.find(&lists, true, |s| s.kommo_user_id == Some(user))),
            _ => Ok(None),
        }
    }

    /// The seller for a Kommo user (real first, then custom, then fictitious).
    pub async fn by_kommo_user(&self, user_id: u64) -> Result<Option<Seller>, DirectoryError> {
        if user_id == 0 {
            return Ok(None);
        }
        let lists = self.lists().await?;
        Ok(self.find(&lists, true, |s| s.kommo_user_id == Some(user_id)))
    }

    /// Assigns a contact to a seller (the "contact" step of [`SellerDirectory::responsible`]).
    pub async fn assign_contact(
        &self,
        contact_id: u64,
        seller_id: &str,
    ) -> Result<Seller, DirectoryError> {
        if contact_id == 0 {
            return Err(invalid("contact_id", "must be a positive integer"));
        }
        let seller = self
            .by_id(seller_id)
            .await?
            .ok_or_else(|| DirectoryError::NotFound(seller_id.trim().to_owned()))?;
        self.inner
            .store
            .put_value(&contact_key(contact_id), seller.id.as_bytes())
            .await?;
        Ok(seller)
    }

    /// Removes a contact's assignment, if any.
    pub async fn unassign_contact(&self, contact_id: u64) -> Result<(), DirectoryError> {
        Ok(self
            .inner
            .store
            .put_value(&contact_key(contact_id), b"")
            .await?)
    }

    /// The seller assigned to a contact, if any (an assignment to a seller that no longer
    /// exists counts as none).
    pub async fn contact_assignment(
        &self,
        contact_id: u64,
    ) -> Result<Option<Seller>, DirectoryError> {
        let Some(bytes) = self.inner.store.get_value(&contact_key(contact_id)).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&bytes);
        if id.trim().is_empty() {
            return Ok(None);
        }
        let found = self.by_id(&id).await?;
        if found.is_none() {
            debug!(contact_id, seller = %id, "contact assigned to an unknown seller");
        }
        Ok(found)
    }

    /// The contact a Kommo talk belongs to (cached).
    pub async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.talk_contacts, talk_id, || {
            call("talk", leads.talk_contact(talk_id))
        })
        .await
    }

    /// The Kommo user responsible for a lead (cached).
    pub async fn lead_user(&self, lead_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.lead_users, lead_id, || {
            call("lead", leads.responsible_user(lead_id))
        })
        .await
    }

    /// The Kommo user responsible for a contact (cached).
    pub async fn contact_user(&self, contact_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.contact_users, contact_id, || {
            call("contact", leads.contact_user(contact_id))
        })
        .await
    }

    /// The lead a Kommo talk belongs to (cached).
    pub async fn talk_lead(&self, talk_id: u64) -> Result<Option<u64>, DirectoryError> {
        let leads = self.lead_source()?;
        cached(&self.inner.talk_leads, talk_id, || {
            call("talk", leads.talk_lead(talk_id))
        })
        .await
    }

    fn lead_source(&self) -> Result<&Arc<dyn LeadSource>, DirectoryError> {
        self.inner
            .leads
            .as_ref()
            .ok_or(DirectoryError::NotConfigured)
    }

    /// Who is responsible for a conversation, and how that was found ([`FoundBy`]):
    /// 1. `Conversation` — `assigned`, the seller the conversation holds (or who opened it
    ///    proactively);
    /// 2. `Contact` — the contact's assignment, else the Kommo user responsible for the
    ///    contact (a `talk_id` is resolved to its contact when no `contact_id` is given);
    /// 3. `Lead` — the Kommo user responsible for the lead (a `talk_id` names its lead when
    ///    no `lead_id` is given).
    ///
    /// A step that cannot answer falls through to the next; a Kommo error (or no Kommo
    /// configured) is returned only when no step found a seller.
    pub async fn responsible(
        &self,
        talk_id: Option<u64>,
        contact_id: Option<u64>,
        lead_id: Option<u64>,
        assigned: Option<&str>,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        if let Some(id) = assigned {
            match self.by_id(id).await? {
                Some(seller) => return Ok(Some((seller, FoundBy::Conversation))),
                None => debug!(seller = id, "conversation held by a seller unknown here"),
            }
        }
        let mut source_error = None;
        let contact_id = match (contact_id.filter(|c| *c > 0), talk_id) {
            (Some(c), _) => Some(c),
            (None, Some(talk)) => self.talk_contact(talk).await.unwrap_or_else(|e| {
                source_error = Some(e);
                None
            }),
            (None, None) => None,
        };
        let by_contact = match contact_id {
            Some(contact) => self.contact_assignment(contact).await?,
            None => None,
        };
        if let Some(seller) = by_contact {
            return Ok(Some((seller, FoundBy::Contact)));
        }
        if let Some(contact) = contact_id {
            match self.contact_user(contact).await {
                Ok(Some(user)) => {
                    if let Some(seller) = self.by_kommo_user(user).await? {
                        return Ok(Some((seller, FoundBy::Contact)));
                    }
                    debug!(
                        contact,
                        user, "contact responsible user is not a known seller"
                    );
                }
                Ok(None) => {}
                Err(e) => source_error = Some(e),
            }
        }
        let lead_id = match (lead_id, talk_id) {
            (Some(lead), _) => Some(lead),
            (None, Some(talk)) => self.talk_lead(talk).await.unwrap_or_else(|e| {
                source_error = Some(e);
                None
            }),
            (None, None) => None,
        };
        if let Some(lead) = lead_id {
            match self.lead_user(lead).await {
                Ok(Some(user)) => {
                    if let Some(seller) = self.by_kommo_user(user).await? {
                        return Ok(Some((seller, FoundBy::Lead)));
                    }
                    debug!(lead, user, "lead responsible user is not a known seller");
                }
                Ok(None) => {}
                Err(e) => source_error = Some(e),
            }
        }
        match source_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// [`SellerDirectory::responsible`] for a talk alone.
    pub async fn lookup_for_talk(
        &self,
        talk_id: u64,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        self.responsible(Some(talk_id), None, None, None).await
    }

    /// [`SellerDirectory::responsible`] for a contact alone.
    pub async fn lookup_for_contact(
        &self,
        contact_id: u64,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        self.responsible(None, Some(contact_id), None, None).await
    }

    /// [`SellerDirectory::responsible`] for a lead alone.
    pub async fn lookup_for_lead(
        &self,
        lead_id: u64,
    ) -> Result<Option<(Seller, FoundBy)>, DirectoryError> {
        self.responsible(None, None, Some(lead_id), None).await
    }

    async fn lists(&self) -> Result<Lists, DirectoryError> {
        Ok(Lists {
            real: self.real_list().await?,
            custom: self.custom_list().await?,
        })
    }

    /// The first seller matching `pred`: custom, real, fictitious — or real first when
    /// `real_first` (Kommo user lookups).
    fn find(
        &self,
        lists: &Lists,
        real_first: bool,
        pred: impl Fn(&Seller) -> bool,
    ) -> Option<Seller> {
        let (first, second) = if real_first {
            (&lists.real, &lists.custom)
        } else {
            (&lists.custom, &lists.real)
        };
        first
            .iter()
            .chain(second.iter())
            .chain(&self.inner.fictitious)
            .find(|s| pred(s))
            .cloned()
    }

    /// The real list: cached; stale triggers one background refresh and is served meanwhile;
    /// the first call loads it (from Kommo, else the last list the store kept).
    /// The real sellers with their attached WhatsApp (configuration, then what the API stored).
    async fn real_list(&self) -> Result<Arc<Vec<Seller>>, DirectoryError> {
        let list = self.real_synced().await?;
        let attached = self.whatsapp_map().await?;
        if self.inner.real_whatsapp.is_empty() && attached.is_empty() {
            return Ok(list);
        }
        let mut list = (*list).clone();
        for seller in &mut list {
            let Some(user) = seller.kommo_user_id else {
                continue;
            };
            for w in [self.inner.real_whatsapp.get(&user), attached.get(&user)]
                .into_iter()
                .flatten()
            {
                if w.contact_id.is_some() {
                    seller.contact_id = w.contact_id;
                }
                if w.phone.is_some() {
                    seller.phone.clone_from(&w.phone);
                }
            }
        }
        Ok(Arc::new(list))
    }

    /// The stored WhatsApp attachments (re-read at least every 10 s, for other nodes' writes).
    async fn whatsapp_map(&self) -> Result<Arc<HashMap<u64, WhatsApp>>, DirectoryError> {
        if let Some((map, at)) = lock(&self.inner.whatsapp).as_ref()
            && at.elapsed() < CUSTOM_TTL.min(self.inner.ttl)
        {
            return Ok(map.clone());
        }
        let map = Arc::new(self.read_whatsapp().await?);
        *lock(&self.inner.whatsapp) = Some((map.clone(), Instant::now()));
        Ok(map)
    }

    async fn read_whatsapp(&self) -> Result<HashMap<u64, WhatsApp>, DirectoryError> {
        match self.inner.store.get_value(WHATSAPP_KEY).await? {
            None => Ok(HashMap::new()),
            Some(bytes) if bytes.is_empty() => Ok(HashMap::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| DirectoryError::Corrupt(format!("{WHATSAPP_KEY}: {e}"))),
        }
    }

    /// Attaches a WhatsApp contact and/or phone to the real seller `id` (`kommo-<user id>`), so
    /// their commands in WhatsApp are recognised; kept across syncs and restarts.
    pub async fn attach_whatsapp(&self, id: &str, new: WhatsApp) -> Result<Seller, DirectoryError> {
        let phone = match new.phone.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => {
                let digits = normalize_phone(raw);
                if !(8..=15).contains(&digits.len()) {
                    return Err(DirectoryError::Invalid {
                        field: "phone",
                        message: format!("must have 8 to 15 digits, got {raw:?}"),
                    });
                }
                Some(digits)
            }
        };
        if new.contact_id.is_none() && phone.is_none() {
            return Err(DirectoryError::Invalid {
                field: "contact_id",
                message: "give contact_id and/or phone".into(),
            });
        }
        let seller = self
            .by_id(id)
            .await?
            .ok_or_else(|| DirectoryError::NotFound(id.to_owned()))?;
        let (Source::Real, Some(user)) = (seller.source, seller.kommo_user_id) else {
            return Err(DirectoryError::Invalid {
                field: "id",
                message: format!(
                    "{id} is not a Kommo-synced seller (custom sellers take contact_id and phone when added)"
                ),
            });
        };
        let _write = self.inner.whatsapp_write.lock().await;
        let lists = self.lists().await?;
        for other in lists
            .real
            .iter()
            .chain(&self.inner.fictitious)
            .chain(lists.custom.iter())
            .filter(|o| o.id != seller.id && o.active)
        {
            if let Some(c) = new.contact_id.filter(|c| other.contact_id == Some(*c)) {
                return Err(DirectoryError::Duplicate {
                    field: "contact_id",
                    value: c.to_string(),
                    seller_id: other.id.clone(),
                });
            }
            if let Some(p) = phone
                .as_ref()
                .filter(|p| other.phone.as_ref().is_some_and(|o| phones_match(p, o)))
            {
                return Err(DirectoryError::Duplicate {
                    field: "phone",
                    value: p.clone(),
                    seller_id: other.id.clone(),
                });
            }
        }
        let mut map = self.read_whatsapp().await?;
        let entry = map.entry(user).or_default();
        if new.contact_id.is_some() {
            entry.contact_id = new.contact_id;
        }
        if phone.is_some() {
            entry.phone = phone;
        }
        let bytes = serde_json::to_vec(&map)
            .map_err(|e| DirectoryError::Corrupt(format!("cannot serialise: {e}")))?;
        self.inner.store.put_value(WHATSAPP_KEY, &bytes).await?;
        *lock(&self.inner.whatsapp) = Some((Arc::new(map), Instant::now()));
        info!(id = %seller.id, "WhatsApp attached to a Kommo-synced seller");
        self.by_id(id)
            .await?
            .ok_or_else(|| DirectoryError::NotFound(id.to_owned()))
    }

    /// The seller whose chat-service (amojo) id this is, or whose Kommo user id it is when
    /// `author` is a number (both spellings of an outgoing message's author).
    pub async fn by_chat_author(&self, author: &str) -> Result<Option<Seller>, DirectoryError> {
        let author = author.trim();
        if author.is_empty() {
            return Ok(None);
        }
        if let Ok(user) = author.parse::<u64>() {
            return self.by_kommo_user(user).await;
        }
        let lists = self.lists().await?;
        Ok(self.find(&lists, true, |s| s.amojo_id.as_deref() == Some(author)))
    }

    async fn real_synced(&self) -> Result<Arc<Vec<Seller>>, DirectoryError> {
        if let Some((list, stale)) = self.inner.real_snapshot() {
            if stale {
                self.refresh_in_background();
            }
            return Ok(list);
        }
        let _refresh = self.inner.refresh_lock.lock().await;
        if let Some((list, _)) = self.inner.real_snapshot() {
            return Ok(list);
        }
        match self.inner.refresh().await {
            Ok(list) => Ok(list),
            Err(e) if self.inner.users.is_some() => {
                warn!(error = %e, "cannot read the Kommo users; using the last synced sellers");
                let restored = self.inner.restore_real().await?;
                Ok(self
                    .inner
                    .install_real(restored, self.inner.retry_delay(), true))
            }
            Err(e) => Err(e),
        }
    }

    fn refresh_in_background(&self) {
        if self.inner.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _flag = ClearOnDrop(&inner.refreshing);
            let _refresh = inner.refresh_lock.lock().await;
            // A sync may have refreshed while this task waited for the lock.
            if inner.real_snapshot().is_some_and(|(_, stale)| !stale) {
                return;
            }
            if let Err(e) = inner.refresh().await {
                warn!(error = %e, "background refresh of the real sellers failed; serving the previous list");
            }
        });
    }

    async fn custom_list(&self) -> Result<Arc<Vec<Seller>>, DirectoryError> {
        let fresh_for = self.inner.ttl.min(CUSTOM_TTL);
        let (cached, generation) = {
            let cache = lock(&self.inner.custom);
            (cache.list.clone(), cache.generation)
        };
        if let Some((list, _)) = cached.as_ref().filter(|(_, at)| at.elapsed() < fresh_for) {
            return Ok(list.clone());
        }
        match self.inner.read_custom().await {
            Ok(list) => {
                let list = Arc::new(list);
                self.inner.install_custom(list.clone(), Some(generation));
                Ok(list)
            }
            Err(e) => match cached {
                Some((list, _)) => {
                    warn!(error = %e, "cannot re-read the custom sellers; serving the previous list");
                    Ok(list)
                }
                None => Err(e),
            },
        }
    }
}

fn clean_areas(areas: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(areas.len());
    for area in areas {
        let area = area.split_whitespace().collect::<Vec<_>>().join(" ");
        if !area.is_empty() && !out.iter().any(|a| a.to_lowercase() == area.to_lowercase()) {
            out.push(area);
        }
    }
    out
}

/// A custom seller from `new`, without its id yet.
fn validate(new: NewSeller) -> Result<Seller, DirectoryError> {
    let name = new.name.split_whitespace().collect::<Vec<_>>().join(" ");
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.chars().count() > NAME_MAX {
        return Err(invalid(
            "name",
            format!("must be at most {NAME_MAX} characters"),
        ));
    }
    if new.contact_id == Some(0) {
        return Err(invalid("contact_id", "must be a positive integer"));
    }
    if new.kommo_user_id == Some(0) {
        return Err(invalid("kommo_user_id", "must be a positive integer"));
    }
    let phone = match new.phone.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => {
            let digits = normalize_phone(raw);
            if !(8..=15).contains(&digits.len()) {
                return Err(invalid(
                    "phone",
                    format!("must have 8 to 15 digits, got {raw:?}"),
                ));
            }
            Some(digits)
        }
    };
    Ok(Seller {
        id: String::new(),
        name,
        kommo_user_id: new.kommo_user_id,
        contact_id: new.contact_id,
        phone,
        areas: clean_areas(new.areas),
        active: true,
        source: Source::Custom,
        amojo_id: None,
    })
}

/// Rejects `seller` when its contact or phone belongs to another seller, or its Kommo user to
/// another custom seller (a custom seller may enrich a real one with a contact and areas).
fn check_duplicates<'a>(
    seller: &Seller,
    custom: &[Seller],
    everyone: impl Iterator<Item = &'a Seller>,
) -> Result<(), DirectoryError> {
    let name = crate::text::fold(&seller.name);
    for other in everyone {
        // Names are how people (and the original's `"vendedor": "Asaf"`) pick a seller: unique
        // among active sellers, ignoring case and accents. A custom entry enriching a Kommo
        // user (same `kommo_user_id`) is the same person.
        let same_person =
            seller.kommo_user_id.is_some() && seller.kommo_user_id == other.kommo_user_id;
        if other.active && !same_person && crate::text::fold(&other.name) == name {
            return Err(DirectoryError::Duplicate {
                field: "name",
                value: seller.name.clone(),
                seller_id: other.id.clone(),
            });
        }
        if let Some(contact) = seller.contact_id.filter(|c| other.contact_id == Some(*c)) {
            return Err(DirectoryError::Duplicate {
                field: "contact_id",
                value: contact.to_string(),
                seller_id: other.id.clone(),
            });
        }
        let same_phone = |p: &&String| other.phone.as_ref().is_some_and(|o| phones_match(p, o));
        if let Some(phone) = seller.phone.as_ref().filter(same_phone) {
            return Err(DirectoryError::Duplicate {
                field: "phone",
                value: phone.clone(),
                seller_id: other.id.clone(),
            });
        }
    }
    let user = seller.kommo_user_id;
    if let Some(other) = custom
        .iter()
        .find(|s| user.is_some() && s.kommo_user_id == user)
    {
        return Err(DirectoryError::Duplicate {
            field: "kommo_user_id",
            value: user.unwrap_or_default().to_string(),
            seller_id: other.id.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones() {
        assert_eq!(normalize_phone("+55 (11) 98765-4321"), "5511987654321");
        assert!(phones_match("5511987654321", "11987654321"));
        assert!(phones_match("11987654321", "11987654321"));
        assert!(!phones_match("987654321", "11987654321"));
        assert!(!phones_match("", ""));
    }

    #[test]
    fn areas_are_trimmed_and_deduplicated() {
        let areas = clean_areas(vec![
            " Trabalhista ".into(),
            "".into(),
            "trabalhista".into(),
            "Direito  de Família".into(),
        ]);
        assert_eq!(areas, ["Trabalhista", "Direito de Família"]);
    }
}
