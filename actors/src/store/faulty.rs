//! A store around another that misbehaves on demand, for the tests of what conversa does when
//! its store does: a `put_value` that fails, or a save that panics (a bug in one contact's
//! handling). Everything else is the inner store's.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;

use super::{IndexUpdate, MemoryStore, SnapshotWrite, Store, StoreError, StoredSnapshot};
use crate::contact::{ContactKey, Millis};
use crate::phase::PhaseName;

/// `inner` with failures switched on and off by the test.
pub struct FaultyStore<S: Store = MemoryStore> {
    inner: S,
    fail_puts: AtomicBool,
    panic_on_save: Mutex<Option<ContactKey>>,
}

impl FaultyStore {
    /// Around a fresh [`MemoryStore`].
    pub fn new() -> Self {
        Self::around(MemoryStore::new())
    }
}

impl Default for FaultyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Store> FaultyStore<S> {
    pub fn around(inner: S) -> Self {
        Self {
            inner,
            fail_puts: AtomicBool::new(false),
            panic_on_save: Mutex::new(None),
        }
    }

    /// While `fail` holds, `put_value` answers `Unavailable` (nothing is written).
    pub fn fail_puts(&self, fail: bool) {
        self.fail_puts.store(fail, Ordering::SeqCst);
    }

    /// The next save of `key` panics (once).
    pub fn panic_on_next_save(&self, key: ContactKey) {
        *self.panic_on_save.lock().unwrap() = Some(key);
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    fn backend(&self) -> &'static str {
        "faulty"
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn load(&self, key: &ContactKey) -> Result<Option<StoredSnapshot>, StoreError> {
        self.inner.load(key).await
    }
    async fn write(
        &self,
        key: &ContactKey,
        expected: u64,
        snapshot: &SnapshotWrite,
        index: &IndexUpdate,
    ) -> Result<u64, StoreError> {
        let victim = {
            let mut armed = self.panic_on_save.lock().unwrap();
            armed.take_if(|victim| victim == key)
        };
        if victim.is_some() {
            panic!("injected failure");
        }
        self.inner.write(key, expected, snapshot, index).await
    }
    async fn due(
        &self,
        upto: Millis,
        limit: usize,
    ) -> Result<Vec<(ContactKey, Millis)>, StoreError> {
        self.inner.due(upto, limit).await
    }
    async fn pending_outbox(&self, limit: usize) -> Result<Vec<ContactKey>, StoreError> {
        self.inner.pending_outbox(limit).await
    }
    async fn pending_outbox_count(&self) -> Result<u64, StoreError> {
        self.inner.pending_outbox_count().await
    }
    async fn phases(&self, limit: usize) -> Result<Vec<(ContactKey, PhaseName)>, StoreError> {
        self.inner.phases(limit).await
    }
    async fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get_value(name).await
    }
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        self.inner.try_lease(name, holder, ttl).await
    }
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_lease(name, holder).await
    }
    async fn take_turn(
        &self,
        name: &str,
        node: &str,
        period: std::time::Duration,
    ) -> Result<Option<super::Turn>, StoreError> {
        self.inner.take_turn(name, node, period).await
    }
    async fn put_value(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        if self.fail_puts.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("injected".into()));
        }
        self.inner.put_value(name, data).await
    }
}
