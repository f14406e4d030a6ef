//! The persistence contract every backend (memory, embedded redb, Redis) fulfils.
//!
//! A backend stores a snapshot per contact under a `version`: opaque *head* bytes (the state that
//! changes at every event: phase, epoch, outbox, timers) and [`LOGS`] *logs*, sequences of opaque
//! items that only grow at the back and shrink at the front (unanswered messages, remembered
//! message ids, the timeline). A save names the head and, per log, only what changed
//! ([`LogWrite`]), so the cost of a save does not grow with the conversation (issue #15). Three
//! small indexes let the engine find work without scanning every contact:
//!
//! * **wake index** — contact → the earliest time its actor must run (a timer, an outbox retry, a
//!   claim that expires). Read on start-up and swept periodically, so no timer is lost.
//! * **outbox index** — contacts whose snapshot holds effects not yet executed.
//! * **phase index** — contact → phase name, for `/stats` and the conversation listings.
//!
//! [`Store::save`] is a compare-and-set on the version: the write lands only when the stored
//! version is the one the caller read, which is what makes several engine nodes on one store
//! safe. The indexes never miss what a stored snapshot needs: a backend writes them with the
//! snapshot in one atomic step, or (where it cannot: a Redis Cluster) first in a way that can
//! only over-approximate (an earlier wake time, an extra pending mark) and exact after it, so
//! that a crash in between leaves an actor woken for nothing, never a timer forgotten.
//!
//! With the `testing` feature (the workspace's tests turn it on): [`MemoryStore`], the in-memory
//! backend; [`FaultyStore`], a wrapper that fails on demand; and [`conformance`], the one test
//! suite all backends must pass. None of them ships in the service.

use std::time::Duration;

use async_trait::async_trait;

use crate::contact::{ContactKey, Millis};
use crate::phase::PhaseName;

/// How many logs a snapshot has. The conversation decides what each holds
/// (`Conversation::to_snapshot`); a store only keeps them apart.
pub const LOGS: usize = 3;

/// A snapshot as the store holds it: its version (1 for the first write; 0 means "nothing
/// stored"), its head and its logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub version: u64,
    /// The head bytes.
    pub data: Vec<u8>,
    /// Each log's items, oldest first (empty for a snapshot written before logs existed).
    pub logs: [Vec<Vec<u8>>; LOGS],
}

/// What a save does to one stored log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogWrite {
    /// Drop `drop_front` items from the front (all of them when there are fewer), then append
    /// `items`. `Append { 0, [] }` leaves the log as it is.
    Append {
        drop_front: usize,
        items: Vec<Vec<u8>>,
    },
    /// Replace the whole log with `items`.
    Replace(Vec<Vec<u8>>),
}

impl LogWrite {
    /// Leaves the log as it is.
    pub const UNCHANGED: LogWrite = LogWrite::Append {
        drop_front: 0,
        items: Vec::new(),
    };
}

/// One save: the new head and what changes in each log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotWrite {
    pub head: Vec<u8>,
    pub logs: [LogWrite; LOGS],
}

impl SnapshotWrite {
    /// A new head, the logs left as they are.
    pub fn head(head: &[u8]) -> Self {
        Self {
            head: head.to_vec(),
            logs: [LogWrite::UNCHANGED; LOGS],
        }
    }
}

/// Applies `write` to a log held as a list of items: what every backend's save does.
pub fn apply_log_write(items: &mut Vec<Vec<u8>>, write: &LogWrite) {
    match write {
        LogWrite::Append {
            drop_front,
            items: new,
        } => {
            items.drain(..(*drop_front).min(items.len()));
            items.extend(new.iter().cloned());
        }
        LogWrite::Replace(new) => *items = new.clone(),
    }
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

/// A reserved turn in a schedule shared by every node on one store ([`Store::take_turn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// How long until the reserved slot.
    pub wait: Duration,
    /// How many nodes took turns of this schedule within the last minute, this one included.
    pub nodes: u32,
    /// False when the schedule is booked too far ahead: nothing was reserved, ask again after
    /// `wait`.
    pub reserved: bool,
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

    /// Compare-and-set: writes `snapshot` (the head, and the changes to each log) as version
    /// `expected + 1` if the stored version is `expected` (0 = nothing stored yet) and returns
    /// the new version; otherwise `Err(Conflict)` and nothing changes. Head, logs and version
    /// change together or not at all. Indexes follow the rules in the module docs.
    async fn write(
        &self,
        key: &ContactKey,
        expected: u64,
        snapshot: &SnapshotWrite,
        index: &IndexUpdate,
    ) -> Result<u64, StoreError>;

    /// [`Store::write`] of a new head, the logs left as they are.
    async fn save(
        &self,
        key: &ContactKey,
        expected: u64,
        head: &[u8],
        index: &IndexUpdate,
    ) -> Result<u64, StoreError> {
        self.write(key, expected, &SnapshotWrite::head(head), index)
            .await
    }

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

    /// A turn in the schedule `name` that every node on this store shares (one API budget for
    /// all nodes): reserves the next free slot, slots `period` apart by the store's own clock,
    /// and says how long to wait for it. `node` names the caller among the nodes counted in
    /// [`Turn::nodes`]. `None` when no other process uses this store: the caller's own limiter
    /// is then the whole schedule.
    async fn take_turn(
        &self,
        name: &str,
        node: &str,
        period: Duration,
    ) -> Result<Option<Turn>, StoreError> {
        let _ = (name, node, period);
        Ok(None)
    }

    /// Takes the lease `name` for `holder` for `ttl` if no other holder has it, or renews it
    /// for the same holder; `true` when `holder` holds it. For work one node at a time must do
    /// (rotating a single-use token). A store no other process uses grants it always: its
    /// callers serialise themselves.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let _ = (name, holder, ttl);
        Ok(true)
    }

    /// Gives up the lease `name` if `holder` still holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _ = (name, holder);
        Ok(())
    }

    /// A small named value outside any conversation (OAuth tokens, custom sellers...).
    async fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    async fn put_value(&self, name: &str, data: &[u8]) -> Result<(), StoreError>;

    /// Compare-and-set of a named value: stores `data` under `name` if the stored value is
    /// `expected` (`None`: no value), and says whether it did. For read-modify-write of a value
    /// several nodes change (the custom sellers' list). The default reads then writes: right for
    /// a store only one process writes ([`Store::exclusive`]) when its callers serialise
    /// themselves; shared stores override it with one atomic step.
    async fn put_value_if(
        &self,
        name: &str,
        expected: Option<&[u8]>,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        if self.get_value(name).await?.as_deref() != expected {
            return Ok(false);
        }
        self.put_value(name, data).await?;
        Ok(true)
    }

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

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
#[cfg(any(test, feature = "testing"))]
mod faulty;
#[cfg(any(test, feature = "testing"))]
mod memory;

#[cfg(any(test, feature = "testing"))]
pub use faulty::FaultyStore;
#[cfg(any(test, feature = "testing"))]
pub use memory::MemoryStore;
