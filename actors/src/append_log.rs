//! The parts of a conversation that only grow at the back and shrink at the front — unanswered
//! messages, the message ids kept for deduplication, the timeline — and what changed in them
//! since the store last saved them.
//!
//! A long conversation holds hundreds of these items; one more message adds one to each. Writing
//! them all again at every message made the cost of a message grow with the conversation
//! (issue #15). An [`AppendLog`] remembers how many of its items the store already holds and how
//! many of those went from the front since, so a save writes only the difference
//! ([`AppendLog::change`]): drop `n` from the front, append these. Anything else (an item edited in
//! place) marks it rewritten, and the next save writes it whole — rare by construction.
//!
//! It serializes as the plain sequence it holds, so a snapshot written before the logs existed
//! (everything in one JSON document) still reads (`crate::snapshot`).

use std::collections::VecDeque;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A sequence that tracks its changes since the last [`AppendLog::mark_saved`].
#[derive(Clone, Debug)]
pub struct AppendLog<T> {
    items: VecDeque<T>,
    /// Items at the front that the store holds (the ones after them were pushed since).
    saved: usize,
    /// The stored size of each of those, in bytes, and their sum: what the log weighs in the
    /// store without encoding it again.
    sizes: VecDeque<usize>,
    saved_bytes: usize,
    /// Items the store holds that left the front since.
    dropped: usize,
    /// Changed in a way "drop, then append" cannot say: written whole at the next save.
    rewritten: bool,
}

/// What a save must do to the stored copy of one log.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<'a, T> {
    /// Drop `drop_front` items from the front, then append `items`.
    Append {
        drop_front: usize,
        items: Vec<&'a T>,
    },
    /// Replace everything with `items`.
    Replace(Vec<&'a T>),
}

impl<T> Default for AppendLog<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            saved: 0,
            sizes: VecDeque::new(),
            saved_bytes: 0,
            dropped: 0,
            rewritten: false,
        }
    }
}

impl<T> AppendLog<T> {
    /// Items as the store holds them, with their stored sizes: nothing to write until they
    /// change.
    pub fn saved(items: impl IntoIterator<Item = (T, usize)>) -> Self {
        let (items, sizes): (VecDeque<T>, VecDeque<usize>) = items.into_iter().unzip();
        Self {
            saved: items.len(),
            saved_bytes: sizes.iter().sum(),
            sizes,
            items,
            dropped: 0,
            rewritten: false,
        }
    }

    /// Items the store does not hold as a log (read from an older snapshot, or made in
    /// memory): the next save writes them whole.
    pub fn unsaved(items: impl IntoIterator<Item = T>) -> Self {
        Self {
            items: items.into_iter().collect(),
            rewritten: true,
            ..Self::default()
        }
    }

    /// Appends at the back. Grows 0 → 1 → 2 → 4 (see [`crate::compact`]).
    pub fn push(&mut self, item: T) {
        if self.items.len() == self.items.capacity() {
            self.items.reserve_exact(self.items.capacity().max(1));
        }
        self.items.push_back(item);
    }

    /// Removes the oldest item.
    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        if self.saved > 0 {
            self.saved -= 1;
            self.dropped += 1;
            self.saved_bytes -= self.sizes.pop_front().unwrap_or_default();
        }
        Some(item)
    }

    /// Removes the `n` oldest items (all of them when there are fewer).
    pub fn drop_front(&mut self, n: usize) {
        for _ in 0..n.min(self.items.len()) {
            self.pop_front();
        }
    }

    /// Keeps only the newest `keep` items.
    pub fn keep_newest(&mut self, keep: usize) {
        self.drop_front(self.items.len().saturating_sub(keep));
    }

    /// Removes every item.
    pub fn clear(&mut self) {
        self.drop_front(self.items.len());
    }

    /// Removes every item and hands them over, oldest first.
    pub fn take(&mut self) -> Vec<T> {
        let n = self.items.len();
        let mut out = Vec::with_capacity(n);
        while let Some(item) = self.pop_front() {
            out.push(item);
        }
        out
    }

    /// The items for editing in place: the next save writes the log whole.
    pub fn edit(&mut self) -> &mut VecDeque<T> {
        self.rewritten = true;
        &mut self.items
    }

    /// What the next save must write for this log.
    pub fn change(&self) -> Change<'_, T> {
        if self.rewritten {
            Change::Replace(self.items.iter().collect())
        } else {
            Change::Append {
                drop_front: self.dropped,
                items: self.items.range(self.saved..).collect(),
            }
        }
    }

    /// The store now holds exactly these items: the [`AppendLog::change`] was written, its
    /// items weighing `written` bytes each.
    pub fn mark_saved(&mut self, written: impl IntoIterator<Item = usize>) {
        if self.rewritten {
            self.sizes.clear();
            self.saved_bytes = 0;
        }
        for size in written {
            self.sizes.push_back(size);
            self.saved_bytes += size;
        }
        debug_assert_eq!(self.sizes.len(), self.items.len(), "sizes of every item");
        self.saved = self.items.len();
        self.dropped = 0;
        self.rewritten = false;
    }

    /// What the store will hold of this log, in bytes, once a change whose items weigh
    /// `written` bytes is saved.
    pub fn stored_bytes_after(&self, written: usize) -> usize {
        if self.rewritten {
            written
        } else {
            self.saved_bytes + written
        }
    }

    /// The items, oldest first.
    pub fn items(&self) -> &VecDeque<T> {
        &self.items
    }

    /// A copy of the items, oldest first.
    pub fn to_vec(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.items.iter().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<T> Deref for AppendLog<T> {
    type Target = VecDeque<T>;

    fn deref(&self) -> &VecDeque<T> {
        &self.items
    }
}

/// Two logs are equal when they hold the same items, whatever the store holds of them.
impl<T: PartialEq> PartialEq for AppendLog<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<T: Eq> Eq for AppendLog<T> {}

impl<T: Serialize> Serialize for AppendLog<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.items.serialize(serializer)
    }
}

/// Read from a whole JSON document (an older snapshot, a test): the store does not hold these
/// as a log, so the next save writes them whole.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for AppendLog<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = VecDeque::<T>::deserialize(deserializer)?;
        Ok(Self::unsaved(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appended<T: Clone>(log: &AppendLog<T>) -> (usize, Vec<T>) {
        match log.change() {
            Change::Append { drop_front, items } => {
                (drop_front, items.into_iter().cloned().collect())
            }
            Change::Replace(_) => panic!("expected an append"),
        }
    }

    #[test]
    fn a_saved_log_writes_only_what_changed_since() {
        let mut log = AppendLog::saved([(1, 1), (2, 1), (3, 1)]);
        assert_eq!(appended(&log), (0, vec![]));
        log.push(4);
        log.push(5);
        assert_eq!(appended(&log), (0, vec![4, 5]));
        log.pop_front();
        assert_eq!(appended(&log), (1, vec![4, 5]));
        assert_eq!(log.stored_bytes_after(2), 4);
        log.mark_saved([1, 1]);
        assert_eq!(appended(&log), (0, vec![]));
        assert_eq!(*log.items(), [2, 3, 4, 5]);
        assert_eq!(log.stored_bytes_after(0), 4);
    }

    #[test]
    fn dropping_past_the_saved_items_drops_unsaved_ones_for_free() {
        let mut log = AppendLog::saved([(1, 1), (2, 1)]);
        log.push(3);
        log.push(4);
        log.drop_front(3);
        // The store holds [1, 2]: drop both, append only 4 (3 came and went in memory).
        assert_eq!(appended(&log), (2, vec![4]));
        log.clear();
        assert_eq!(appended(&log), (2, vec![]));
        assert!(log.is_empty());
    }

    #[test]
    fn an_edit_or_a_log_read_whole_is_written_whole() {
        let mut log = AppendLog::saved([(1, 1), (2, 1)]);
        log.edit()[0] = 9;
        assert_eq!(log.change(), Change::Replace(vec![&9, &2]));
        assert_eq!(log.stored_bytes_after(5), 5);
        log.mark_saved([3, 2]);
        assert_eq!(log.stored_bytes_after(0), 5);
        assert_eq!(appended(&log), (0, vec![]));

        let read: AppendLog<i32> = serde_json::from_str("[7, 8]").unwrap();
        assert_eq!(read.change(), Change::Replace(vec![&7, &8]));
        assert_eq!(serde_json::to_string(&read).unwrap(), "[7,8]");
    }

    #[test]
    fn take_hands_over_everything_oldest_first() {
        let mut log = AppendLog::saved([(1, 1), (2, 1)]);
        log.push(3);
        assert_eq!(log.take(), vec![1, 2, 3]);
        assert_eq!(appended(&log), (2, vec![]));
    }
}
