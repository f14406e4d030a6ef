//! The in-memory backend: for tests only (it forgets everything on exit).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{IndexUpdate, SnapshotWrite, Store, StoreError, StoredSnapshot, apply_log_write};
use crate::contact::{ContactKey, Millis};
use crate::phase::PhaseName;

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

    async fn write(
        &self,
        key: &ContactKey,
        expected: u64,
        snapshot: &SnapshotWrite,
        index: &IndexUpdate,
    ) -> Result<u64, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let current = inner.snapshots.get(key).map_or(0, |s| s.version);
        if current != expected {
            return Err(StoreError::Conflict { current });
        }
        let version = expected + 1;
        let mut logs = inner
            .snapshots
            .remove(key)
            .map(|s| s.logs)
            .unwrap_or_default();
        for (log, write) in logs.iter_mut().zip(&snapshot.logs) {
            apply_log_write(log, write);
        }
        inner.snapshots.insert(
            *key,
            StoredSnapshot {
                version,
                data: snapshot.head.clone(),
                logs,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn memory_store_conforms() {
        conformance::run(std::sync::Arc::new(MemoryStore::new())).await;
    }
}
