//! A conversation's bounded memory of what happened and why.
//!
//! An operator asking "why did the bot say that / stay silent" reads this: every message in,
//! dispatch, reply delivered or dropped (with the reason), takeover and release, each naming the
//! Kommo message id or `dispatch_id` it concerns. Only the last [`Timeline::CAPACITY`] entries
//! are kept, so a snapshot stays small.

use serde::{Deserialize, Serialize};

use crate::append_log::AppendLog;
use crate::contact::Millis;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum What {
    MessageIn,
    AttachmentMerged,
    /// A customer message that arrived while the bot may not answer (seller, pause).
    MessageHeld,
    DispatchQueued,
    DispatchSent,
    DispatchSuperseded,
    DispatchRetry,
    DeadLettered,
    ReplyAccepted,
    ReplyDropped,
    ReplySent,
    /// An outgoing chat message that is the echo of a reply this engine sent.
    EchoSeen,
    EffectCancelled,
    NoteAdded,
    Takeover,
    LeaseExtended,
    Released,
    LeaseExpired,
    Paused,
    Resumed,
    ProactiveStarted,
    SchedulingStarted,
    SchedulingDone,
    SchedulingTimeout,
    /// One part of a multi-part reply went out; the next follows after the part delay.
    PartSent,
    /// A dispatch or reply waited in the outbox longer than the policy allows: dropped.
    EffectExpired,
    /// A customer message fell off the bounded list of unanswered messages.
    MessageDropped,
    /// Nothing happened for the idle time: back to `idle`.
    ConversationEnded,
    /// Kommo has a customer message that never reached conversa (gap detection): the seller is
    /// told and, while the bot is in charge, n8n gets a `missed` dispatch.
    MessageMissed,
    /// A message reported missed arrived after all: applied like any other.
    MissedArrived,
    /// An operator ran a dead-lettered effect again (the detail names the new id).
    Replayed,
    /// An operator gave up on a dead-lettered effect.
    DeadLetterDropped,
    /// A customer message longer than the policy allows was cut (and marked).
    MessageTruncated,
    /// The snapshot outgrew its hard cap: the oldest of what it keeps was let go (the detail
    /// says what).
    Trimmed,
}

/// One decision of a conversation's timeline (the last 100 are kept).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(as = TimelineEntry, example = json!({"at": 1767225600000u64, "what": "reply_dropped",
        "dispatch_id": "0-1298200-1", "detail": "human_assigned"}))
)]
pub struct Entry {
    /// Unix milliseconds.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at: Millis,
    pub what: What,
    /// The Kommo message id it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub message_id: Option<String>,
    /// The n8n dispatch it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub dispatch_id: Option<String>,
    /// Why (e.g. the reason a reply was dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeline(AppendLog<Entry>);

/// The longest detail an entry keeps, in bytes; the ids are cut to
/// [`crate::message::MAX_ID_BYTES`].
pub const MAX_DETAIL_BYTES: usize = 300;

impl Timeline {
    pub const CAPACITY: usize = 100;

    /// Adds an entry (its strings cut to their bounds), dropping the oldest beyond
    /// [`Timeline::CAPACITY`].
    pub fn push(&mut self, mut entry: Entry) {
        use crate::message::{MAX_ID_BYTES, cut};
        if self.0.len() == Self::CAPACITY {
            self.0.pop_front();
        }
        for id in [&mut entry.message_id, &mut entry.dispatch_id]
            .into_iter()
            .flatten()
        {
            cut(id, MAX_ID_BYTES);
        }
        if let Some(detail) = &mut entry.detail {
            cut(detail, MAX_DETAIL_BYTES);
        }
        self.0.push(entry);
    }

    /// Keeps only the newest `keep` entries.
    pub fn keep_newest(&mut self, keep: usize) {
        self.0.keep_newest(keep);
    }

    /// The entries as a log the store saves by difference.
    pub(crate) fn log(&self) -> &AppendLog<Entry> {
        &self.0
    }

    pub(crate) fn log_mut(&mut self) -> &mut AppendLog<Entry> {
        &mut self.0
    }

    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &Entry> + ExactSizeIterator {
        self.0.iter()
    }

    pub fn last(&self) -> Option<&Entry> {
        self.0.back()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_hundred() {
        let mut t = Timeline::default();
        for i in 0..250 {
            t.push(Entry {
                at: i,
                what: What::MessageIn,
                message_id: None,
                dispatch_id: None,
                detail: None,
            });
        }
        assert_eq!(t.len(), Timeline::CAPACITY);
        assert_eq!(t.entries().next().unwrap().at, 150);
        assert_eq!(t.last().unwrap().at, 249);
    }
}
