//! The persistence contract every backend (memory, embedded redb, Redis) fulfils.
//!
//! A backend stores opaque snapshot bytes per contact under a `version`, and three small indexes
//! that let the engine find work without scanning every contact:
//!
//! * **wake index** — contact → the earliest time its actor must run (a timer, an outbox retry, a
//!   claim that expires). Read on start-up and swept periodically, so no timer is lost.
//! * **outbox index** — contacts whose snapshot holds effects not yet executed.
//! * **phase index** — contact → phase name, for `/stats` and the conversation listings.
//!
//! [`Store::save`] is a compare-and-set on the version: the write lands only when the stored
//! version is the one the caller read, which is what makes several engine nodes on one store
//! safe. Indexes are written *before* the snapshot in a way that can only over-approximate (an
//! earlier wake time, an extra pending mark), then made exact after it: a crash in between leaves
//! an actor woken for nothing, never a timer forgotten.
//!
//! [`conformance`] is the one test suite all backends must pass.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::contact::{ContactKey, Millis};
use crate::phase::PhaseName;

/// A snapshot as the store holds it: the serialized conversation and its version
/// (1 for the first write; 0 means "nothing stored").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub version: u64,
    pub data: Vec<u8>,
}

/// What the indexes must say about a contact once its snapshot is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexUpdate {
    /// When the contact's actor must next run, if ever.
    pub wake_at: Option<Millis>,
    /// Whether the snapshot holds outbox entries.
    pub outbox_pending: bool,
    /// The conversation's phase.
    pub phase: PhaseName,
    /// The entries the writer's own previous save wrote for the version this save replaces,
    /// when it knows them (it wrote that version itself). A store that writes indexes apart from
    /// the snapshot may use them to skip corrections that cannot change anything. `None` when
    /// in doubt (first save after a load, after a conflict or an error).
    pub previous: Option<Box<IndexUpdate>>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Another writer saved first; the stored version is `current`.
    #[error("version conflict: stored version is {current}")]
    Conflict { current: u64 },
    /// The backend cannot be reached or did not answer in time. Maps to HTTP 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with something that makes no sense.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `memory`, `embedded` or `redis`: shown in `/stats` and `/ready`.
    fn backend(&self) -> &'static str;

    /// Round-trips to the backend; `Err(Unavailable)` when it is down.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn load(&self, key: &ContactKey) -> Result<Option<StoredSnapshot>, StoreError>;

    /// The stored version of a contact's snapshot (0 = none). Lets an actor confirm that its
    /// copy is current before answering from it without a write.
    async fn version(&self, key: &ContactKey) -> Result<u64, StoreError> {
        Ok(self.load(key).await?.map_or(0, |s| s.version))
    }

    /// True when no other process can write this store (the embedded store holds a file
    /// lock), so an actor's copy is always current and [`Store::version`] need not be asked.
    fn exclusive(&self) -> bool {
        false
    }

    /// Compare-and-set: writes `data` as version `expected + 1` if the stored version is
    /// `expected` (0 = nothing stored yet) and returns the new version; otherwise
    /// `Err(Conflict)` and nothing changes. Indexes follow the rules in the module docs.
    async fn save(
        &self,
        key: &ContactKey,
        expected: u64,
        data: &[u8],
        index: &IndexUpdate,
    ) -> Result<u64, StoreError>;

    /// Contacts whose wake time is at or before `upto`, earliest first, at most `limit`.
    async fn due(
        &self,
        upto: Millis,
        limit: usize,
    ) -> Result<Vec<(ContactKey, Millis)>, StoreError>;

    /// Contacts marked as having outbox entries, at most `limit`.
    async fn pending_outbox(&self, limit: usize) -> Result<Vec<ContactKey>, StoreError>;

    /// How many contacts are marked as having outbox entries (a gauge read at every metrics
    /// scrape: backends answer it without listing them).
    async fn pending_outbox_count(&self) -> Result<u64, StoreError>;

    /// Contacts with their phase, at most `limit`, in no particular order.
    async fn phases(&self, limit: usize) -> Result<Vec<(ContactKey, PhaseName)>, StoreError>;

    /// A small named value outside any conversation (OAuth tokens, custom sellers...).
    async fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    async fn put_value(&self, name: &str, data: &[u8]) -> Result<(), StoreError>;

    /// Stores `data` under `name` unless a value is there already, and returns the value that
    /// is stored (the first writer's). The default reads then writes: right for a store only
    /// one process writes ([`Store::exclusive`]) when callers of one name do not race; shared
    /// stores override it with one atomic step.
    async fn put_value_if_absent(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, StoreError> {
        if let Some(existing) = self.get_value(name).await? {
            return Ok(existing);
        }
        self.put_value(name, data).await?;
        Ok(data.to_vec())
    }
}

/// The in-memory backend: for tests only (it forgets everything on exit).
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    snapshots: BTreeMap<ContactKey, StoredSnapshot>,
    wake: BTreeMap<ContactKey, Millis>,
    outbox: std::collections::BTreeSet<ContactKey>,
    phases: BTreeMap<ContactKey, PhaseName>,
    values: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn load(&self, key: &ContactKey) -> Result<Option<StoredSnapshot>, StoreError> {
        Ok(self.inner.lock().unwrap().snapshots.get(key).cloned())
    }

    async fn save(
        &self,
        key: &ContactKey,
        expected: u64,
        data: &[u8],
        index: &IndexUpdate,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let current = inner.snapshots.get(key).map_or(0, |s| s.version);
        if current != expected {
            return Err(StoreError::Conflict { current });
        }
        let version = expected + 1;
        inner.snapshots.insert(
            *key,
            StoredSnapshot {
                version,
                data: data.to_vec(),
            },
        );
        match index.wake_at {
            Some(at) => inner.wake.insert(*key, at),
            None => inner.wake.remove(key),
        };
        if index.outbox_pending {
            inner.outbox.insert(*key);
        } else {
            inner.outbox.remove(key);
        }
        inner.phases.insert(*key, index.phase);
        Ok(version)
    }

    async fn due(
        &self,
        upto: Millis,
        limit: usize,
    ) -> Result<Vec<(ContactKey, Millis)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        let mut due: Vec<_> = inner
            .wake
            .iter()
            .filter(|(_, at)| **at <= upto)
            .map(|(k, at)| (*k, *at))
            .collect();
        due.sort_by_key(|(k, at)| (*at, *k));
        due.truncate(limit);
        Ok(due)
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<ContactKey>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner.outbox.iter().take(limit).copied().collect())
    }

    async fn pending_outbox_count(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().unwrap().outbox.len() as u64)
    }

    async fn phases(&self, limit: usize) -> Result<Vec<(ContactKey, PhaseName)>, StoreError> {
        let inner = self.inner.lock().unwrap();
        Ok(inner
            .phases
            .iter()
            .take(limit)
            .map(|(k, p)| (*k, *p))
            .collect())
    }

    async fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.inner.lock().unwrap().values.get(name).cloned())
    }

    async fn put_value(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        self.inner
            .lock()
            .unwrap()
            .values
            .insert(name.to_owned(), data.to_vec());
        Ok(())
    }

    async fn put_value_if_absent(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .values
            .entry(name.to_owned())
            .or_insert_with(|| data.to_vec())
            .clone())
    }
}

pub mod conformance {
    //! The store conformance suite. Every backend runs [`run`] in its own tests; each check uses
    //! its own account id, so one fresh store serves the whole suite.

    use super::*;
    use std::sync::Arc;

    fn index(wake_at: Option<Millis>, outbox_pending: bool, phase: &str) -> IndexUpdate {
        let phase = PhaseName::parse(phase).expect("a phase name");
        IndexUpdate {
            wake_at,
            outbox_pending,
            phase,
            previous: None,
        }
    }

    /// Runs every check against `store`, which must start empty.
    pub async fn run(store: Arc<dyn Store>) {
        store.ping().await.expect("ping");
        first_write_and_reload(&*store).await;
        compare_and_set(&*store).await;
        concurrent_writers_serialize(store.clone()).await;
        wake_index(&*store).await;
        outbox_index(&*store).await;
        phase_index(&*store).await;
        named_values(&*store).await;
        binary_data(&*store).await;
    }

    async fn first_write_and_reload(store: &dyn Store) {
        let key = ContactKey::new(1, 10);
        assert_eq!(store.load(&key).await.unwrap(), None, "unknown contact");
        let v = store
            .save(&key, 0, b"one", &index(None, false, "idle"))
            .await
            .unwrap();
        assert_eq!(v, 1);
        assert_eq!(
            store.load(&key).await.unwrap(),
            Some(StoredSnapshot {
                version: 1,
                data: b"one".to_vec()
            })
        );
    }

    async fn compare_and_set(store: &dyn Store) {
        let key = ContactKey::new(2, 10);
        let ix = index(None, false, "idle");
        assert_eq!(store.save(&key, 0, b"a", &ix).await.unwrap(), 1);
        assert_eq!(store.save(&key, 1, b"b", &ix).await.unwrap(), 2);
        // A writer that read version 1 lost the race.
        assert_eq!(
            store.save(&key, 1, b"stale", &ix).await,
            Err(StoreError::Conflict { current: 2 })
        );
        // "Create" over an existing snapshot is a conflict too.
        assert_eq!(
            store.save(&key, 0, b"stale", &ix).await,
            Err(StoreError::Conflict { current: 2 })
        );
        // A version from the future is a conflict, not a jump.
        assert_eq!(
            store.save(&key, 7, b"stale", &ix).await,
            Err(StoreError::Conflict { current: 2 })
        );
        let snap = store.load(&key).await.unwrap().unwrap();
        assert_eq!((snap.version, snap.data.as_slice()), (2, &b"b"[..]));
    }

    async fn concurrent_writers_serialize(store: Arc<dyn Store>) {
        // 8 writers each add 10 increments with read-modify-CAS loops: no increment is lost.
        let key = ContactKey::new(3, 10);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    loop {
                        let (version, n) = match store.load(&key).await.unwrap() {
                            None => (0, 0u64),
                            Some(s) => (
                                s.version,
                                String::from_utf8(s.data).unwrap().parse().unwrap(),
                            ),
                        };
                        let next = (n + 1).to_string();
                        match store
                            .save(&key, version, next.as_bytes(), &index(None, false, "idle"))
                            .await
                        {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let snap = store.load(&key).await.unwrap().unwrap();
        assert_eq!(snap.data, b"80");
        assert_eq!(snap.version, 80);
    }

    async fn wake_index(store: &dyn Store) {
        let a = ContactKey::new(4, 1);
        let b = ContactKey::new(4, 2);
        let c = ContactKey::new(4, 3);
        store
            .save(&a, 0, b"a", &index(Some(5_000), false, "bot_active"))
            .await
            .unwrap();
        store
            .save(&b, 0, b"b", &index(Some(1_000), false, "bot_active"))
            .await
            .unwrap();
        store
            .save(&c, 0, b"c", &index(None, false, "idle"))
            .await
            .unwrap();
        let mine = |v: Vec<(ContactKey, Millis)>| -> Vec<(ContactKey, Millis)> {
            v.into_iter().filter(|(k, _)| k.account_id == 4).collect()
        };
        assert_eq!(mine(store.due(999, 100).await.unwrap()), vec![]);
        assert_eq!(mine(store.due(1_000, 100).await.unwrap()), vec![(b, 1_000)]);
        assert_eq!(
            mine(store.due(10_000, 100).await.unwrap()),
            vec![(b, 1_000), (a, 5_000)],
            "earliest first"
        );
        // Moving a wake time later after a successful write is exact, not "earliest ever".
        store
            .save(&b, 1, b"b2", &index(Some(8_000), false, "bot_active"))
            .await
            .unwrap();
        assert_eq!(
            mine(store.due(10_000, 100).await.unwrap()),
            vec![(a, 5_000), (b, 8_000)]
        );
        // A failed (conflicting) write may leave an earlier wake time, never a later or no one.
        let _ = store
            .save(&a, 99, b"x", &index(Some(9_000), false, "bot_active"))
            .await;
        let _ = store
            .save(&a, 99, b"x", &index(None, false, "bot_active"))
            .await;
        let a_due = mine(store.due(u64::MAX, 100).await.unwrap())
            .into_iter()
            .find(|(k, _)| *k == a)
            .expect("a's wake survives a failed write");
        assert!(a_due.1 <= 5_000, "a failed write must not postpone a timer");
        // Clearing removes it.
        store
            .save(&a, 1, b"a2", &index(None, false, "idle"))
            .await
            .unwrap();
        store
            .save(&b, 2, b"b3", &index(None, false, "idle"))
            .await
            .unwrap();
        assert_eq!(mine(store.due(u64::MAX, 100).await.unwrap()), vec![]);
        // The limit is honoured.
        for i in 10..20 {
            store
                .save(
                    &ContactKey::new(4, i),
                    0,
                    b"n",
                    &index(Some(i * 10), false, "bot_active"),
                )
                .await
                .unwrap();
        }
        assert_eq!(mine(store.due(u64::MAX, 3).await.unwrap()).len(), 3);
    }

    async fn outbox_index(store: &dyn Store) {
        let a = ContactKey::new(5, 1);
        let mine = |v: Vec<ContactKey>| -> Vec<ContactKey> {
            v.into_iter().filter(|k| k.account_id == 5).collect()
        };
        store
            .save(&a, 0, b"a", &index(None, true, "bot_active"))
            .await
            .unwrap();
        assert_eq!(mine(store.pending_outbox(1000).await.unwrap()), vec![a]);
        let listed = store.pending_outbox(usize::MAX).await.unwrap().len() as u64;
        assert_eq!(store.pending_outbox_count().await.unwrap(), listed);
        // A failed write never clears the mark.
        let _ = store
            .save(&a, 42, b"x", &index(None, false, "bot_active"))
            .await;
        assert_eq!(mine(store.pending_outbox(1000).await.unwrap()), vec![a]);
        store
            .save(&a, 1, b"a", &index(None, false, "bot_active"))
            .await
            .unwrap();
        assert_eq!(mine(store.pending_outbox(1000).await.unwrap()), vec![]);

        // A writer that names the entries of its own previous save (`previous`) gets indexes
        // that say exactly what the newest snapshot needs, whatever the store skips.
        let b = ContactKey::new(5, 2);
        let wake_of = |due: Vec<(ContactKey, Millis)>| -> Vec<Millis> {
            due.into_iter()
                .filter(|(k, _)| *k == b)
                .map(|(_, at)| at)
                .collect()
        };
        let after = |prev: &IndexUpdate, next: IndexUpdate| IndexUpdate {
            previous: Some(Box::new(prev.clone())),
            ..next
        };
        let idle = index(None, false, "bot_active");
        store.save(&b, 0, b"b", &idle).await.unwrap();
        // Work appears (wake + outbox), stays, moves earlier, moves later, then is done.
        let steps = [
            (Some(9_000), true),
            (Some(9_000), true),
            (Some(7_000), true),
            (Some(8_000), true),
            (None, true),
            (None, false),
            (Some(6_000), false),
        ];
        let mut prev = idle;
        for (n, (wake, pending)) in steps.into_iter().enumerate() {
            let next = after(&prev, index(wake, pending, "bot_active"));
            store.save(&b, n as u64 + 1, b"b", &next).await.unwrap();
            assert_eq!(
                wake_of(store.due(u64::MAX, 1000).await.unwrap()),
                wake.into_iter().collect::<Vec<_>>(),
                "wake index after step {n}"
            );
            let marked = mine(store.pending_outbox(1000).await.unwrap()).contains(&b);
            assert_eq!(marked, pending, "outbox index after step {n}");
            prev = IndexUpdate {
                previous: None,
                ..next
            };
        }
        let phase_change = after(&prev, index(Some(6_000), false, "paused"));
        store.save(&b, 8, b"b", &phase_change).await.unwrap();
        let phases = store.phases(10_000).await.unwrap();
        assert!(phases.contains(&(b, PhaseName::Paused)), "{phases:?}");
    }

    async fn phase_index(store: &dyn Store) {
        let a = ContactKey::new(6, 1);
        store
            .save(&a, 0, b"a", &index(None, false, "bot_active"))
            .await
            .unwrap();
        store
            .save(&a, 1, b"a", &index(None, false, "human_assigned"))
            .await
            .unwrap();
        let phases: Vec<_> = store
            .phases(1_000_000)
            .await
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.account_id == 6)
            .collect();
        assert_eq!(phases, vec![(a, PhaseName::HumanAssigned)]);
    }

    async fn named_values(store: &dyn Store) {
        assert_eq!(store.get_value("conformance:token").await.unwrap(), None);
        store.put_value("conformance:token", b"t1").await.unwrap();
        store.put_value("conformance:token", b"t2").await.unwrap();
        assert_eq!(
            store.get_value("conformance:token").await.unwrap(),
            Some(b"t2".to_vec())
        );
        // The first value stays; a later one is not written.
        let first = store.put_value_if_absent("conformance:key", b"k1").await;
        assert_eq!(first.unwrap(), b"k1".to_vec());
        let second = store.put_value_if_absent("conformance:key", b"k2").await;
        assert_eq!(second.unwrap(), b"k1".to_vec());
        assert_eq!(
            store.get_value("conformance:key").await.unwrap(),
            Some(b"k1".to_vec())
        );
    }

    async fn binary_data(store: &dyn Store) {
        let key = ContactKey::new(7, 1);
        let data: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
        store
            .save(&key, 0, &data, &index(None, false, "idle"))
            .await
            .unwrap();
        assert_eq!(store.load(&key).await.unwrap().unwrap().data, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::run(std::sync::Arc::new(MemoryStore::new())).await;
    }
}
