//! How a conversation is stored: a *head* (one JSON document: phase, epoch, outbox, timers...)
//! and three logs of JSON items that only grow at the back and shrink at the front.
//!
//! | log | holds |
//! |-----|-------|
//! | 0   | unanswered customer messages (`pending`) |
//! | 1   | message ids remembered for deduplication (`seen`) |
//! | 2   | the timeline |
//!
//! A save writes the head and, per log, what changed since the last save ([`AppendLog`]): one
//! message adds one item to each of logs 0–2 whatever the conversation's length, so its cost is
//! flat (issue #15). A snapshot written before the logs existed is one JSON document with these
//! parts inline and empty logs; it reads as it always did, and its first save moves the parts
//! into the logs.

use serde::Serialize;

use crate::append_log::{AppendLog, Change};
use crate::conversation::Conversation;
use crate::store::{LogWrite, SnapshotWrite, StoredSnapshot};

impl Conversation {
    /// The save that brings the store from the last saved state to this one. Call
    /// [`Conversation::saved`] once the store has it.
    pub fn to_snapshot(&mut self) -> Result<SnapshotWrite, serde_json::Error> {
        let logs = [
            log_write(self.pending.change())?,
            log_write(self.seen.change())?,
            log_write(self.timeline.log().change())?,
        ];
        // The head is everything else: the logs are taken out (and skipped when empty) while
        // it is written, then put back.
        let pending = std::mem::take(&mut self.pending);
        let seen = std::mem::take(&mut self.seen);
        let timeline = std::mem::take(&mut self.timeline);
        let head = serde_json::to_vec(&*self);
        self.pending = pending;
        self.seen = seen;
        self.timeline = timeline;
        Ok(SnapshotWrite { head: head?, logs })
    }

    /// The store now holds `write` (made by [`Conversation::to_snapshot`] from this conversation
    /// as it is): the next save writes only what changes.
    pub fn saved(&mut self, write: &SnapshotWrite) {
        let sizes = |n: usize| written(&write.logs[n]).iter().map(|item| item.len());
        self.pending.mark_saved(sizes(0));
        self.seen.mark_saved(sizes(1));
        self.timeline.log_mut().mark_saved(sizes(2));
    }

    /// What the store holds of this conversation once `write` is saved, in bytes: its head and
    /// every item of its logs. Known without encoding the logs again.
    pub fn stored_bytes(&self, write: &SnapshotWrite) -> usize {
        let log = |n: usize| written(&write.logs[n]).iter().map(Vec::len).sum::<usize>();
        write.head.len()
            + self.pending.stored_bytes_after(log(0))
            + self.seen.stored_bytes_after(log(1))
            + self.timeline.log().stored_bytes_after(log(2))
    }

    /// Reads a stored snapshot back, whichever format wrote it.
    pub fn from_snapshot(stored: &StoredSnapshot) -> Result<Conversation, serde_json::Error> {
        let mut c: Conversation = serde_json::from_slice(&stored.data)?;
        let [pending, seen, timeline] = &stored.logs;
        // Parts found inline (an older snapshot) stay as read: the next save writes them whole
        // into the logs, which the store holds empty.
        if !pending.is_empty() {
            c.pending = read_log(pending)?;
        }
        if !seen.is_empty() {
            c.seen = read_log(seen)?;
        }
        if !timeline.is_empty() {
            *c.timeline.log_mut() = read_log(timeline)?;
        }
        Ok(c)
    }
}

fn written(write: &LogWrite) -> &[Vec<u8>] {
    match write {
        LogWrite::Append { items, .. } | LogWrite::Replace(items) => items,
    }
}

fn log_write<T: Serialize>(change: Change<'_, T>) -> Result<LogWrite, serde_json::Error> {
    let encode = |items: Vec<&T>| -> Result<Vec<Vec<u8>>, serde_json::Error> {
        items.into_iter().map(serde_json::to_vec).collect()
    };
    Ok(match change {
        Change::Append { drop_front, items } => LogWrite::Append {
            drop_front,
            items: encode(items)?,
        },
        Change::Replace(items) => LogWrite::Replace(encode(items)?),
    })
}

fn read_log<T: serde::de::DeserializeOwned>(
    items: &[Vec<u8>],
) -> Result<AppendLog<T>, serde_json::Error> {
    let items = items
        .iter()
        .map(|item| Ok((serde_json::from_slice(item)?, item.len())))
        .collect::<Result<Vec<(T, usize)>, serde_json::Error>>()?;
    Ok(AppendLog::saved(items))
}
