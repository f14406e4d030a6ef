//! Growth for the small collections a conversation keeps (pending messages, seen ids, recent
//! dispatches, the timeline).
//!
//! `Vec` and `VecDeque` jump from empty to room for four elements on the first push. Most
//! conversations hold one or two of each, and a contact's state lives in memory for as long as
//! its actor is active (100k of them on one node), so that jump was a few hundred bytes per
//! contact for nothing. These pushes start at one slot and then double, which keeps the
//! amortised cost of a push constant.

use std::collections::VecDeque;

/// A push that grows capacity 0 → 1 → 2 → 4 → … instead of 0 → 4 → 8 → ….
pub trait PushCompact<T> {
    fn push_compact(&mut self, value: T);
}

impl<T> PushCompact<T> for Vec<T> {
    fn push_compact(&mut self, value: T) {
        if self.len() == self.capacity() {
            self.reserve_exact(self.capacity().max(1));
        }
        self.push(value);
    }
}

impl<T> PushCompact<T> for VecDeque<T> {
    fn push_compact(&mut self, value: T) {
        if self.len() == self.capacity() {
            self.reserve_exact(self.capacity().max(1));
        }
        self.push_back(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_doubles_from_one() {
        let mut v = Vec::new();
        let mut caps = Vec::new();
        for i in 0..9 {
            v.push_compact(i);
            caps.push(v.capacity());
        }
        assert_eq!(caps, [1, 2, 4, 4, 8, 8, 8, 8, 16]);
        assert_eq!(v, (0..9).collect::<Vec<_>>());

        let mut d = VecDeque::new();
        d.push_compact(1u64);
        assert_eq!(d.capacity(), 1);
        d.push_compact(2);
        d.pop_front();
        d.push_compact(3);
        assert_eq!(d.capacity(), 2);
        assert_eq!(d, [2, 3]);
    }
}
