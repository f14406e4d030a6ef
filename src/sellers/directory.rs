//! The [`SellerDirectory`]: the three lists (real, fictitious, custom) with their caches,
//! refreshes and persistence, and the lookups by id, contact, phone, Kommo user and chat author.
//! Who is responsible for a conversation is `responsible.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use conversa_actors::store::Store;
use tracing::{debug, info, warn};

use super::model::*;

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

/// The directory. Cheap to share (`Arc` it once); every method takes `&self`.
pub struct SellerDirectory {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) store: Arc<dyn Store>,
    pub(super) users: Option<Arc<dyn UserSource>>,
    pub(super) leads: Option<Arc<dyn LeadSource>>,
    pub(super) ttl: Duration,
    pub(super) fictitious: Vec<Seller>,
    pub(super) real_areas: HashMap<u64, Vec<String>>,
    pub(super) real_whatsapp: HashMap<u64, WhatsApp>,
    /// What the store holds under [`WHATSAPP_KEY`], and when it was read.
    pub(super) whatsapp: Mutex<Option<(Arc<WhatsAppMap>, Instant)>>,
    pub(super) whatsapp_write: tokio::sync::Mutex<()>,
    pub(super) real: Mutex<RealCache>,
    /// Set while a background refresh is scheduled or running (single-flight).
    pub(super) refreshing: AtomicBool,
    /// Serialises every refresh of the real list (background, forced, first load).
    pub(super) refresh_lock: tokio::sync::Mutex<()>,
    pub(super) custom: Mutex<CustomCache>,
    /// Serialises the read-modify-write of the custom list.
    pub(super) custom_write: tokio::sync::Mutex<()>,
    pub(super) lead_users: TtlMap,
    pub(super) talk_contacts: TtlMap,
    pub(super) contact_users: TtlMap,
    pub(super) talk_leads: TtlMap,
}

#[derive(Default)]
pub(super) struct RealCache {
    /// `None` until a list was loaded (from the source or the store).
    sellers: Option<Arc<Vec<Seller>>>,
    fresh_until: Option<Instant>,
    /// What the store holds under [`REAL_KEY`], as far as this process knows.
    persisted: Option<Arc<Vec<Seller>>>,
}

#[derive(Default)]
pub(super) struct CustomCache {
    list: Option<(Arc<Vec<Seller>>, Instant)>,
    /// Bumped by every write, so a read that started before it does not install older data.
    generation: u64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears the single-flight flag when the background refresh ends, even by a panic.
pub(super) struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A small id → optional id map whose entries expire.
pub(super) struct TtlMap {
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
pub(super) async fn cached<F>(
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

pub(super) async fn call<T>(
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
        parse_custom(self.store.get_value(CUSTOM_KEY).await?.as_deref())
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
pub(super) struct Lists {
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

    /// Validates and stores a custom seller; returns it with its new id. Nodes sharing a store
    /// may add at once: the list is written only if it is still the one read (the store's
    /// compare-and-set), else read again, so no addition overwrites another.
    pub async fn add_custom(&self, new: NewSeller) -> Result<Seller, DirectoryError> {
        let validated = validate(new)?;
        let _write = self.inner.custom_write.lock().await;
        for _ in 0..CUSTOM_WRITE_ATTEMPTS {
            let mut seller = validated.clone();
            // The store, not the cache: another node may have added one meanwhile.
            let stored = self.inner.store.get_value(CUSTOM_KEY).await?;
            let mut custom = parse_custom(stored.as_deref())?;
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
            if !self
                .inner
                .store
                .put_value_if(CUSTOM_KEY, stored.as_deref(), &bytes)
                .await?
            {
                continue; // another node wrote first: read its list and try again
            }
            self.inner.install_custom(Arc::new(custom), None);
            info!(id = %seller.id, name = %seller.name, "custom seller added");
            return Ok(seller);
        }
        Err(DirectoryError::StoreUnavailable(format!(
            "the custom sellers changed under {CUSTOM_WRITE_ATTEMPTS} attempts in a row; try again"
        )))
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

    pub(super) async fn lists(&self) -> Result<Lists, DirectoryError> {
        Ok(Lists {
            real: self.real_list().await?,
            custom: self.custom_list().await?,
        })
    }

    /// The first seller matching `pred`: custom, real, fictitious — or real first when
    /// `real_first` (Kommo user lookups).
    pub(super) fn find(
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

/// How often an addition reads the custom list again when another node wrote it first.
const CUSTOM_WRITE_ATTEMPTS: usize = 20;

/// The stored custom list (`None` or empty: no custom seller yet).
fn parse_custom(stored: Option<&[u8]>) -> Result<Vec<Seller>, DirectoryError> {
    match stored {
        None | Some([]) => Ok(Vec::new()),
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| DirectoryError::Corrupt(format!("{CUSTOM_KEY}: {e}"))),
    }
}
