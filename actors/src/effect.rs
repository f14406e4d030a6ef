//! What the state machine asks the world to do, and the outbox that makes it durable.
//!
//! Effects that leave the process (an n8n dispatch, a reply to the customer, a note on the lead)
//! are written into the conversation's [`Outbox`] in the same snapshot as the state change that
//! caused them, executed after the write, and removed when done: at least once, each under a
//! stable id (`dispatch_id` for dispatches) that receivers use to deduplicate.
//!
//! Several engine nodes may load the same conversation; an entry is executed only by the node
//! whose [`Claim`] is written in the snapshot, so without a crash no entry runs twice.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::contact::Millis;
use crate::message::{InboundMessage, SellerRef};
use crate::note::Note;

/// Why n8n is being called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DispatchKind {
    /// Customer messages to answer.
    Message,
    /// Open a conversation (form filled, material downloaded, meeting booked).
    Proactive,
    /// Arrange a meeting with the seller.
    Scheduling,
    /// The bot is back in charge: the AI's memory must not keep it silent.
    Released,
    /// Customer messages Kommo has and conversa never received (`details.missed`: their ids and
    /// times): the AI asks the customer to write them again.
    Missed,
}

/// One call to n8n.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dispatch {
    pub dispatch_id: String,
    pub kind: DispatchKind,
    /// The takeover epoch when it was made: a reply for an older epoch is stale.
    pub epoch: u64,
    /// Every customer message since the last delivered reply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<InboundMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller: Option<SellerRef>,
    /// Free-form context: proactive trigger and lead data, scheduling request.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

/// Work that leaves the process. Timers are not effects: the conversation keeps them and the
/// driver asks for the next one ([`crate::Conversation::poll_timeout`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Call n8n.
    Dispatch(Dispatch),
    /// Send the AI's reply to the customer through Kommo: one message per part, in order.
    /// `sent` parts already went out; the executor sends `texts[sent]`, and the conversation
    /// moves `sent` on when it is done, so a retry never repeats a part.
    DeliverReply {
        dispatch_id: Option<String>,
        texts: Vec<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        sent: usize,
    },
    /// Leave a note on the lead for the seller.
    AddNote {
        #[serde(alias = "text", deserialize_with = "crate::note::note_or_text")]
        note: Note,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Effect {
    /// The part of a reply the executor sends next (`None` for other effects or when every
    /// part went out).
    pub fn next_part(&self) -> Option<&str> {
        match self {
            Effect::DeliverReply { texts, sent, .. } => texts.get(*sent).map(String::as_str),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// The customer stopped typing: send the burst to n8n.
    Debounce,
    /// Remind the seller that their hold is about to expire.
    LeaseNudge,
    /// The seller's hold expired: back to the bot.
    LeaseExpiry,
    /// n8n did not settle the scheduling request in time.
    SchedulingTimeout,
    /// Nothing happened for `conversation_idle_ms`: the conversation ends.
    IdleEnd,
}

/// Which node is executing an entry, until when. Past `until` anyone may take it over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: String,
    pub until: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Stable id: the `dispatch_id` of a dispatch; `...-r<n>`/`...-n<n>` for replies and notes.
    pub id: String,
    pub effect: Effect,
    pub created_at: Millis,
    pub attempts: u32,
    /// Not to be tried before this time (retry backoff).
    pub not_before: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl OutboxEntry {
    /// Whether it is a call to n8n.
    pub fn is_dispatch(&self) -> bool {
        matches!(self.effect, Effect::Dispatch(_))
    }

    /// When this entry next needs attention: its retry time, or its claim's expiry.
    pub fn wake_at(&self) -> Millis {
        match &self.claim {
            Some(c) => c.until,
            None => self.not_before,
        }
    }
}

/// The pending external effects of one conversation, in creation order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Outbox(BTreeMap<u64, OutboxEntry>);

impl Outbox {
    pub fn push(&mut self, seq: u64, entry: OutboxEntry) {
        self.0.insert(seq, entry);
    }

    pub fn entries(&self) -> impl Iterator<Item = &OutboxEntry> {
        self.0.values()
    }

    pub fn get(&self, id: &str) -> Option<&OutboxEntry> {
        self.0.values().find(|e| e.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut OutboxEntry> {
        self.0.values_mut().find(|e| e.id == id)
    }

    pub fn remove(&mut self, id: &str) -> Option<OutboxEntry> {
        let seq = *self.0.iter().find(|(_, e)| e.id == id)?.0;
        self.0.remove(&seq)
    }

    /// Removes every entry `doomed` selects, returning them.
    pub fn remove_where(
        &mut self,
        mut doomed: impl FnMut(&OutboxEntry) -> bool,
    ) -> Vec<OutboxEntry> {
        let seqs: Vec<u64> = self
            .0
            .iter()
            .filter(|(_, e)| doomed(e))
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter().filter_map(|s| self.0.remove(&s)).collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Claims for `node`, until `until`, every entry that is due at `now` and not held by a live
    /// claim of another node; returns their ids. Entries already claimed by `node` are not
    /// returned again (they are being executed).
    pub fn claim_due(&mut self, node: &str, now: Millis, until: Millis) -> Vec<String> {
        self.claim_due_where(node, now, until, |_| true)
    }

    /// [`Outbox::claim_due`] restricted to the entries `eligible` accepts (those an executor
    /// exists for).
    ///
    /// Dispatches go to n8n one at a time, in order: while one is claimed (being sent), the
    /// next waits unclaimed, so a newer customer message can still replace it, and a burst of
    /// messages never piles up copies of the conversation in flight.
    pub fn claim_due_where(
        &mut self,
        node: &str,
        now: Millis,
        until: Millis,
        mut eligible: impl FnMut(&OutboxEntry) -> bool,
    ) -> Vec<String> {
        let mut claimed = Vec::new();
        let mut dispatch_out = self
            .0
            .values()
            .any(|e| e.is_dispatch() && e.claim.as_ref().is_some_and(|c| c.until > now));
        for entry in self.0.values_mut() {
            if !eligible(entry) {
                continue;
            }
            let free = match &entry.claim {
                None => entry.not_before <= now && !(entry.is_dispatch() && dispatch_out),
                Some(c) => c.until <= now,
            };
            if free {
                entry.claim = Some(Claim {
                    node: node.to_owned(),
                    until,
                });
                dispatch_out |= entry.is_dispatch();
                claimed.push(entry.id.clone());
            }
        }
        claimed
    }

    /// Drops every claim held by `node` (used when a node restarts under the same name: its
    /// old process is gone, so its claims are void).
    pub fn release_claims_of(&mut self, node: &str) {
        for entry in self.0.values_mut() {
            if entry.claim.as_ref().is_some_and(|c| c.node == node) {
                entry.claim = None;
            }
        }
    }

    pub fn next_wake(&self) -> Option<Millis> {
        self.next_wake_where(|_| true)
    }

    /// The earliest wake time among the entries `eligible` accepts. A dispatch waiting behind
    /// one being sent wakes when that one's claim runs out at the latest (its completion
    /// wakes the conversation earlier).
    pub fn next_wake_where(
        &self,
        mut eligible: impl FnMut(&OutboxEntry) -> bool,
    ) -> Option<Millis> {
        let sending = self
            .0
            .values()
            .filter(|e| e.is_dispatch())
            .filter_map(|e| e.claim.as_ref().map(|c| c.until))
            .max();
        self.0
            .values()
            .filter(|e| eligible(e))
            .map(|e| match (e.claim.is_none() && e.is_dispatch(), sending) {
                (true, Some(until)) => e.wake_at().max(until),
                _ => e.wake_at(),
            })
            .min()
    }

    /// Drops the claims of `node` on entries `running` says are not being executed: left over
    /// from an actor that failed mid-way, they would otherwise wait for their lease to expire.
    pub fn release_orphans(&mut self, node: &str, mut running: impl FnMut(&str) -> bool) {
        for entry in self.0.values_mut() {
            if entry.claim.as_ref().is_some_and(|c| c.node == node) && !running(&entry.id) {
                entry.claim = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: &str, not_before: Millis) -> OutboxEntry {
        OutboxEntry {
            id: id.into(),
            effect: Effect::AddNote {
                note: Note::SchedulingTimedOut,
            },
            created_at: 0,
            attempts: 0,
            not_before,
            claim: None,
            last_error: None,
        }
    }

    #[test]
    fn claims_respect_backoff_and_other_nodes() {
        let mut o = Outbox::default();
        o.push(1, note("a", 0));
        o.push(2, note("b", 500));
        assert_eq!(o.claim_due("n1", 100, 10_100), vec!["a"]);
        // n2 cannot take a live claim of n1, nor a not-yet-due entry.
        assert!(o.claim_due("n2", 200, 10_200).is_empty());
        assert_eq!(o.claim_due("n2", 600, 10_600), vec!["b"]);
        // Once n1's claim expires, n2 may take over.
        assert_eq!(o.claim_due("n2", 10_100, 20_100), vec!["a"]);
        assert_eq!(o.next_wake(), Some(10_600));
        o.release_claims_of("n2");
        assert_eq!(o.next_wake(), Some(0));
    }

    fn dispatch(id: &str) -> OutboxEntry {
        OutboxEntry {
            effect: Effect::Dispatch(Dispatch {
                dispatch_id: id.into(),
                kind: DispatchKind::Message,
                epoch: 0,
                messages: Vec::new(),
                seller: None,
                details: serde_json::Value::Null,
            }),
            ..note(id, 0)
        }
    }

    #[test]
    fn dispatches_go_one_at_a_time_and_the_next_wakes_behind_the_first() {
        let mut o = Outbox::default();
        o.push(1, dispatch("d1"));
        o.push(2, dispatch("d2"));
        o.push(3, note("n", 0));
        // One dispatch and the note; the second dispatch waits.
        assert_eq!(o.claim_due("n1", 100, 10_100), vec!["d1", "n"]);
        assert!(o.claim_due("n1", 200, 10_200).is_empty());
        assert_eq!(o.next_wake(), Some(10_100), "not a busy wake-up");
        // The first is done: the second goes.
        o.remove("d1");
        assert_eq!(o.claim_due("n1", 300, 10_300), vec!["d2"]);
        // A claim that ran out (its node died) no longer holds the next one back.
        let mut o = Outbox::default();
        o.push(1, dispatch("d1"));
        o.push(2, dispatch("d2"));
        assert_eq!(o.claim_due("n1", 100, 10_100), vec!["d1"]);
        assert_eq!(o.claim_due("n2", 10_200, 20_200), vec!["d1"]);
    }
}
