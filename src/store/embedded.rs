//! The embedded store: [`Store`] on one redb file, `<data_dir>/conversa.redb`.
//!
//! It is the default backend when no Redis URL is configured, so `cargo run` works on a fresh
//! machine with nothing else installed. It serves one engine node (redb takes an exclusive file
//! lock; a second process opening the same data dir gets a clear `Unavailable` error).
//!
//! # Durability and group commit
//!
//! Every write goes through one writer thread fed by a bounded channel. The thread takes the
//! first queued request, drains whatever else is already waiting (up to [`MAX_BATCH`]), applies
//! them all in **one** redb write transaction and commits it once with
//! [`redb::Durability::Immediate`] (an fsync). Only then does it answer each request. So a
//! `save` that returns `Ok` is on disk, and many concurrent saves from different contacts share
//! one fsync instead of paying one each. Each request in a batch is checked on its own: a
//! version conflict answers that request with `Err(Conflict)` and writes nothing for it, without
//! affecting the others. A storage error while applying or committing the batch aborts the whole
//! transaction and answers every request in it with the error (nothing of the batch is written).
//!
//! Reads (`load`, `due`, `pending_outbox`, `phases`, `get_value`, `ping`) use their own read
//! transactions on `spawn_blocking`; redb is MVCC, so they never wait for the writer.
//!
//! # Tables
//!
//! Contacts are keyed by a fixed 16-byte key: `account_id` then `contact_id`, both big-endian,
//! so byte order is `(account_id, contact_id)` order.
//!
//! * `snapshots`: contact → 8-byte big-endian version, a `0` byte, the snapshot's [`LOGS`] logs
//!   (each a big-endian u32 count, then every item as a u32 length and its bytes), then the head.
//!   A save applies the logs' changes to the stored bytes (drop from the front, append) and
//!   writes one value, as before the logs: an item is never encoded twice by the engine, and one
//!   B-tree entry per contact keeps a save to one page. A snapshot written before the logs
//!   existed is the version followed by the whole JSON document (never a `0` byte first).
//! * `wake`: contact → wake time (millis); the "where is this contact's entry" side.
//! * `wake_by_time`: 24-byte key `millis BE ‖ contact` → `()`; `due(upto, limit)` is a range
//!   scan from the start up to `upto`, earliest first, never a full scan.
//! * `outbox`: contact → `()`, the contacts with pending outbox entries.
//! * `phases`: contact → phase name.
//! * `values`: name → bytes, the small named values (OAuth tokens...).
//!
//! The compare-and-set, the snapshot write and the index updates happen in one write
//! transaction, so they are atomic: unlike the Redis backend, the indexes here never need to
//! over-approximate. They are always exact.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use async_trait::async_trait;
use conversa_actors::contact::{ContactKey, Millis};
use conversa_actors::phase::PhaseName;
use redb::{
    Database, DatabaseError, Durability, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::{IndexUpdate, LOGS, LogWrite, SnapshotWrite, Store, StoreError, StoredSnapshot};

/// The most write requests one transaction (and so one fsync) carries.
pub const MAX_BATCH: usize = 256;

/// How many write requests may wait for the writer before `save` callers wait for room.
const QUEUE_CAPACITY: usize = 4096;

/// The database file's name inside the data dir.
pub const FILE_NAME: &str = "conversa.redb";

type Contact = [u8; 16];
type WakeKey = [u8; 24];

const SNAPSHOTS: TableDefinition<Contact, &[u8]> = TableDefinition::new("snapshots");
const WAKE: TableDefinition<Contact, u64> = TableDefinition::new("wake");
const WAKE_BY_TIME: TableDefinition<WakeKey, ()> = TableDefinition::new("wake_by_time");
const OUTBOX: TableDefinition<Contact, ()> = TableDefinition::new("outbox");
const PHASES: TableDefinition<Contact, &str> = TableDefinition::new("phases");
const VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("values");
/// The byte after the version that says "logs follow".
const WITH_LOGS: u8 = 0;

/// A `snapshots` value, read: its version, each log's items (oldest first) and its head.
#[derive(Debug, PartialEq, Eq)]
struct Decoded<'a> {
    version: u64,
    logs: [Vec<&'a [u8]>; LOGS],
    head: &'a [u8],
}

fn encode_snapshot(version: u64, logs: &[Vec<&[u8]>; LOGS], head: &[u8]) -> Vec<u8> {
    let items: usize = logs.iter().flatten().map(|i| 4 + i.len()).sum();
    let mut value = Vec::with_capacity(9 + 4 * LOGS + items + head.len());
    value.extend_from_slice(&version.to_be_bytes());
    value.push(WITH_LOGS);
    for log in logs {
        value.extend_from_slice(&(log.len() as u32).to_be_bytes());
        for item in log {
            value.extend_from_slice(&(item.len() as u32).to_be_bytes());
            value.extend_from_slice(item);
        }
    }
    value.extend_from_slice(head);
    value
}

fn contact_bytes(key: &ContactKey) -> Contact {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&key.account_id.to_be_bytes());
    out[8..].copy_from_slice(&key.contact_id.to_be_bytes());
    out
}

fn contact_from(bytes: &Contact) -> ContactKey {
    let (a, c) = bytes.split_at(8);
    ContactKey::new(
        u64::from_be_bytes(a.try_into().expect("8 bytes")),
        u64::from_be_bytes(c.try_into().expect("8 bytes")),
    )
}

fn wake_key(at: Millis, contact: &Contact) -> WakeKey {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(&at.to_be_bytes());
    out[8..].copy_from_slice(contact);
    out
}

fn wake_from(bytes: &WakeKey) -> (ContactKey, Millis) {
    let (at, contact) = bytes.split_at(8);
    let contact: Contact = contact.try_into().expect("16 bytes");
    (
        contact_from(&contact),
        u64::from_be_bytes(at.try_into().expect("8 bytes")),
    )
}

/// Splits a stored snapshot value into its version, logs and head.
fn decode_snapshot<'a>(key: &ContactKey, raw: &'a [u8]) -> Result<Decoded<'a>, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Corrupt(format!(
            "snapshot of {key} is {} bytes, shorter than its version header",
            raw.len()
        )));
    }
    let (version, rest) = raw.split_at(8);
    let version = u64::from_be_bytes(version.try_into().expect("8 bytes"));
    if version == 0 {
        return Err(StoreError::Corrupt(format!(
            "snapshot of {key} has version 0"
        )));
    }
    let mut logs: [Vec<&[u8]>; LOGS] = Default::default();
    if rest.first() != Some(&WITH_LOGS) {
        // Written before the logs: the head is the whole document, no log holds anything.
        return Ok(Decoded {
            version,
            logs,
            head: rest,
        });
    }
    let cut = || StoreError::Corrupt(format!("snapshot of {key} is cut inside its logs"));
    let mut at = 1;
    let word = |at: &mut usize| -> Result<usize, StoreError> {
        let bytes = rest.get(*at..*at + 4).ok_or_else(cut)?;
        *at += 4;
        Ok(u32::from_be_bytes(bytes.try_into().expect("4 bytes")) as usize)
    };
    for log in &mut logs {
        let count = word(&mut at)?;
        for _ in 0..count {
            let len = word(&mut at)?;
            log.push(rest.get(at..at + len).ok_or_else(cut)?);
            at += len;
        }
    }
    Ok(Decoded {
        version,
        logs,
        head: &rest[at..],
    })
}

/// Maps any redb error: corruption and schema mismatches are `Corrupt`, everything else (I/O,
/// a closed database...) is `Unavailable`.
fn map_err(err: impl Into<redb::Error>) -> StoreError {
    let err: redb::Error = err.into();
    match err {
        redb::Error::Corrupted(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::UpgradeRequired(_) => StoreError::Corrupt(format!("embedded store: {err}")),
        other => StoreError::Unavailable(format!("embedded store: {other}")),
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("embedded store: the writer thread has stopped".to_owned())
}

enum WriteRequest {
    Save {
        key: ContactKey,
        expected: u64,
        snapshot: SnapshotWrite,
        index: IndexUpdate,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    PutValue {
        name: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What one request of a batch turned into, answered after the commit.
enum Outcome {
    Saved(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
    Put(oneshot::Sender<Result<(), StoreError>>),
}

/// A [`Store`] on a single redb file. See the module docs.
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    tx: Option<mpsc::Sender<WriteRequest>>,
    writer: Option<JoinHandle<()>>,
    commits: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Opens (creating it and `data_dir` if missing) `<data_dir>/conversa.redb` and starts the
    /// writer thread. Blocking (file I/O, and a repair pass after a crash): call it at start-up.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "data dir {} is in use by another conversa process (file {} is locked)",
                data_dir.display(),
                path.display()
            )),
            other => match map_err(other) {
                StoreError::Unavailable(m) => {
                    StoreError::Unavailable(format!("cannot open {}: {m}", path.display()))
                }
                StoreError::Corrupt(m) => {
                    StoreError::Corrupt(format!("cannot open {}: {m}", path.display()))
                }
                conflict => conflict,
            },
        })?;
        // Create every table once, so read transactions always find them.
        let txn = db.begin_write().map_err(map_err)?;
        {
            txn.open_table(SNAPSHOTS).map_err(map_err)?;
            txn.open_table(WAKE).map_err(map_err)?;
            txn.open_table(WAKE_BY_TIME).map_err(map_err)?;
            txn.open_table(OUTBOX).map_err(map_err)?;
            txn.open_table(PHASES).map_err(map_err)?;
            txn.open_table(VALUES).map_err(map_err)?;
        }
        txn.commit().map_err(map_err)?;

        let db = Arc::new(db);
        let commits = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = {
            let db = db.clone();
            let commits = commits.clone();
            std::thread::Builder::new()
                .name("conversa-redb-writer".to_owned())
                .spawn(move || writer_loop(&db, rx, &commits))
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start the embedded writer: {e}"))
                })?
        };
        Ok(Self {
            db,
            path,
            tx: Some(tx),
            writer: Some(writer),
            commits,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many write transactions (each one fsync) the writer has committed since `open`.
    /// With group commit this is lower than the number of writes.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(db.begin_read().map_err(map_err)?))
            .await
            .map_err(|e| StoreError::Unavailable(format!("embedded read task failed: {e}")))?
    }

    async fn submit(&self, request: WriteRequest) -> Result<(), StoreError> {
        let tx = self.tx.as_ref().ok_or_else(writer_gone)?;
        tx.send(request).await.map_err(|_| writer_gone())
    }
}

impl Drop for EmbeddedStore {
    /// Stops the writer after it has finished the requests already queued, so that once the
    /// store is dropped the file is closed and can be opened again (by this process or another).
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: batch, apply, commit once, answer.
fn writer_loop(db: &Database, mut rx: mpsc::Receiver<WriteRequest>, commits: &AtomicU64) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        write_batch(db, &mut batch, commits);
    }
}

/// Applies and commits `batch` (emptying it), then answers every request.
fn write_batch(db: &Database, batch: &mut Vec<WriteRequest>, commits: &AtomicU64) {
    let result = begin(db).and_then(|txn| {
        let outcomes = apply_all(&txn, batch)?;
        txn.commit().map_err(map_err)?;
        Ok(outcomes)
    });
    match result {
        Ok(outcomes) => {
            commits.fetch_add(1, Ordering::Relaxed);
            for outcome in outcomes {
                // A caller that went away no longer wants the answer; its write stands.
                match outcome {
                    Outcome::Saved(reply, r) => {
                        let _ = reply.send(r);
                    }
                    Outcome::Put(reply) => {
                        let _ = reply.send(Ok(()));
                    }
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, requests = batch.len(), "embedded store write failed");
            for request in batch.drain(..) {
                match request {
                    WriteRequest::Save { reply, .. } => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    WriteRequest::PutValue { reply, .. } => {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
    }
    batch.clear();
}

fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write().map_err(map_err)?;
    // The default, but the durability contract depends on it: say it.
    txn.set_durability(Durability::Immediate)
        .map_err(|e| StoreError::Unavailable(format!("embedded store: {e}")))?;
    Ok(txn)
}

/// Applies every request of the batch inside `txn`. An `Err` is a storage failure: the caller
/// drops (aborts) the transaction. Requests stay in `batch` until the batch is known to be
/// applied, so a failure can still answer them all.
fn apply_all(
    txn: &WriteTransaction,
    batch: &mut Vec<WriteRequest>,
) -> Result<Vec<Outcome>, StoreError> {
    let mut snapshots = txn.open_table(SNAPSHOTS).map_err(map_err)?;
    let mut wake = txn.open_table(WAKE).map_err(map_err)?;
    let mut wake_by_time = txn.open_table(WAKE_BY_TIME).map_err(map_err)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(map_err)?;
    let mut phases = txn.open_table(PHASES).map_err(map_err)?;
    let mut values = txn.open_table(VALUES).map_err(map_err)?;

    let mut results = Vec::with_capacity(batch.len());
    for request in batch.iter() {
        match request {
            WriteRequest::Save {
                key,
                expected,
                snapshot,
                index,
                ..
            } => {
                let contact = contact_bytes(key);
                // The compare-and-set. Checked before any write, so a refused or corrupt request
                // writes nothing.
                // The stored value, copied: the table is written below.
                let old = snapshots
                    .get(&contact)
                    .map_err(map_err)?
                    .map(|raw| raw.value().to_vec());
                let decoded = match &old {
                    None => Ok(None),
                    Some(raw) => decode_snapshot(key, raw).map(Some),
                };
                let decoded = match decoded {
                    Ok(d) => d,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                let (current, mut logs) = match decoded {
                    None => (0, Default::default()),
                    Some(d) => (d.version, d.logs),
                };
                if current != *expected {
                    results.push(Err(StoreError::Conflict { current }));
                    continue;
                }
                let version = expected + 1;
                // The logs, by difference: drop from the front, append at the back.
                for (log, write) in logs.iter_mut().zip(&snapshot.logs) {
                    let items = match write {
                        LogWrite::Append { drop_front, items } => {
                            log.drain(..(*drop_front).min(log.len()));
                            items
                        }
                        LogWrite::Replace(items) => {
                            log.clear();
                            items
                        }
                    };
                    log.extend(items.iter().map(Vec::as_slice));
                }
                snapshots
                    .insert(
                        &contact,
                        encode_snapshot(version, &logs, &snapshot.head).as_slice(),
                    )
                    .map_err(map_err)?;

                // Indexes, exact: same transaction as the snapshot, so no over-approximation.
                let old_wake = wake.get(&contact).map_err(map_err)?.map(|g| g.value());
                if let Some(old) = old_wake
                    && Some(old) != index.wake_at
                {
                    wake_by_time
                        .remove(&wake_key(old, &contact))
                        .map_err(map_err)?;
                }
                match index.wake_at {
                    Some(at) => {
                        if old_wake != Some(at) {
                            wake.insert(&contact, at).map_err(map_err)?;
                            wake_by_time
                                .insert(&wake_key(at, &contact), ())
                                .map_err(map_err)?;
                        }
                    }
                    None => {
                        if old_wake.is_some() {
                            wake.remove(&contact).map_err(map_err)?;
                        }
                    }
                }
                if index.outbox_pending {
                    outbox.insert(&contact, ()).map_err(map_err)?;
                } else {
                    outbox.remove(&contact).map_err(map_err)?;
                }
                phases
                    .insert(&contact, index.phase.as_str())
                    .map_err(map_err)?;
                results.push(Ok(version));
            }
            WriteRequest::PutValue { name, data, .. } => {
                values
                    .insert(name.as_str(), data.as_slice())
                    .map_err(map_err)?;
                results.push(Ok(0));
            }
        }
    }
    // Everything applied: hand the reply channels over to the outcomes.
    Ok(batch
        .drain(..)
        .zip(results)
        .map(|(request, result)| match request {
            WriteRequest::Save { reply, .. } => Outcome::Saved(reply, result),
            WriteRequest::PutValue { reply, .. } => Outcome::Put(reply),
        })
        .collect())
}

#[async_trait]
impl Store for EmbeddedStore {
    /// redb holds a file lock: no other process writes this store.
    fn exclusive(&self) -> bool {
        true
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.tx.as_ref().is_none_or(|tx| tx.is_closed()) {
            return Err(writer_gone());
        }
        self.read(|txn| {
            txn.open_table(VALUES).map_err(map_err)?;
            Ok(())
        })
        .await
    }

    async fn load(&self, key: &ContactKey) -> Result<Option<StoredSnapshot>, StoreError> {
        let key = *key;
        self.read(move |txn| {
            let table = txn.open_table(SNAPSHOTS).map_err(map_err)?;
            let Some(raw) = table.get(&contact_bytes(&key)).map_err(map_err)? else {
                return Ok(None);
            };
            let Decoded {
                version,
                logs,
                head,
            } = decode_snapshot(&key, raw.value())?;
            let logs = logs.map(|log| log.into_iter().map(<[u8]>::to_vec).collect());
            Ok(Some(StoredSnapshot {
                version,
                data: head.to_vec(),
                logs,
            }))
        })
        .await
    }

    async fn write(
        &self,
        key: &ContactKey,
        expected: u64,
        snapshot: &SnapshotWrite,
        index: &IndexUpdate,
    ) -> Result<u64, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(WriteRequest::Save {
            key: *key,
            expected,
            snapshot: snapshot.clone(),
            index: index.clone(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn due(
        &self,
        upto: Millis,
        limit: usize,
    ) -> Result<Vec<(ContactKey, Millis)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |txn| {
            let table = txn.open_table(WAKE_BY_TIME).map_err(map_err)?;
            let end = wake_key(upto, &[0xff; 16]);
            let mut out = Vec::new();
            for entry in table.range(..=end).map_err(map_err)? {
                let (k, _) = entry.map_err(map_err)?;
                let k = k.value();
                out.push(wake_from(&k));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn pending_outbox_count(&self) -> Result<u64, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(OUTBOX).map_err(map_err)?;
            table.len().map_err(map_err)
        })
        .await
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<ContactKey>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(OUTBOX).map_err(map_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(map_err)?.take(limit) {
                let (k, _) = entry.map_err(map_err)?;
                out.push(contact_from(&k.value()));
            }
            Ok(out)
        })
        .await
    }

    async fn phases(&self, limit: usize) -> Result<Vec<(ContactKey, PhaseName)>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(PHASES).map_err(map_err)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(map_err)?.take(limit) {
                let (k, phase) = entry.map_err(map_err)?;
                // A name this version does not know (written by a newer one) is left out.
                if let Some(phase) = PhaseName::parse(phase.value()) {
                    out.push((contact_from(&k.value()), phase));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(VALUES).map_err(map_err)?;
            Ok(table
                .get(name.as_str())
                .map_err(map_err)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn put_value(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.submit(WriteRequest::PutValue {
            name: name.to_owned(),
            data: data.to_vec(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| writer_gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_like_the_contact() {
        let a = ContactKey::new(1, u64::MAX);
        let b = ContactKey::new(2, 0);
        assert_eq!(contact_from(&contact_bytes(&a)), a);
        assert!(contact_bytes(&a) < contact_bytes(&b));
        let w = wake_key(300, &contact_bytes(&b));
        assert_eq!(wake_from(&w), (b, 300));
        assert!(wake_key(299, &contact_bytes(&b)) < wake_key(300, &contact_bytes(&a)));
        assert!(wake_key(300, &[0xff; 16]) >= w);
    }

    #[test]
    fn bad_snapshot_bytes_are_corrupt_not_a_panic() {
        let key = ContactKey::new(1, 2);
        assert!(matches!(
            decode_snapshot(&key, b"abc"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_snapshot(&key, &[0u8; 8]),
            Err(StoreError::Corrupt(_))
        ));
        // Before the logs: the version, then the document.
        let mut raw = 5u64.to_be_bytes().to_vec();
        raw.extend_from_slice(b"{}");
        let old = decode_snapshot(&key, &raw).unwrap();
        assert_eq!((old.version, old.head), (5, &b"{}"[..]));
        assert!(old.logs.iter().all(Vec::is_empty));
        // With logs: between the version and the head; cut short is corrupt.
        let logs: [Vec<&[u8]>; LOGS] = [vec![b"a", b""], vec![], vec![b"t1"]];
        let raw = encode_snapshot(6, &logs, b"x");
        let new = decode_snapshot(&key, &raw).unwrap();
        assert_eq!((new.version, &new.logs, new.head), (6, &logs, &b"x"[..]));
        for cut in [9, 12, 20, raw.len() - 3] {
            assert!(
                matches!(
                    decode_snapshot(&key, &raw[..cut]),
                    Err(StoreError::Corrupt(_))
                ),
                "cut at {cut}"
            );
        }
    }
}
