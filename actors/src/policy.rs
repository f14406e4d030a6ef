//! The knobs of the conversation state machine, set from configuration.
//!
//! They are handed to [`crate::Conversation::handle`] with every event, so the machine stays
//! pure and a configuration change applies to every conversation at once.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Quiet time after a customer message before the burst goes to n8n; 0 dispatches at once.
    pub debounce_ms: u64,
    /// The longest a burst may be held while the customer keeps typing.
    pub debounce_max_ms: u64,
    /// A seller's hold expires this long after their last message; `None` = never.
    pub human_lease_ms: Option<u64>,
    /// How long before the lease expires the seller is nudged with a note; 0 = no nudge.
    pub lease_nudge_ms: u64,
    /// How long n8n may take to settle a scheduling request before the bot takes over again.
    pub scheduling_timeout_ms: u64,
    /// A bot conversation without customer activity for this long is no longer "live", so a
    /// proactive start may open a new one.
    pub live_window_ms: u64,
    /// First retry delay of a failed effect; doubles per attempt up to `retry_max_ms`.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// An effect still failing this long after it was queued is dead-lettered.
    pub dead_letter_after_ms: u64,
    /// Whether decisions a seller should see leave a note on the lead.
    pub notes: bool,
    /// Whether a seller writing in the chat takes the conversation over by itself.
    pub auto_takeover_on_human_reply: bool,
    /// A bot conversation with no customer message and no pending work for this long ends
    /// (back to `idle`); `None` = never.
    #[serde(default)]
    pub conversation_idle_ms: Option<u64>,
    /// A dispatch or reply still waiting in the outbox this long after it was queued is
    /// dead-lettered instead of reaching n8n or the customer late; `None` = no limit.
    #[serde(default)]
    pub max_effect_age_ms: Option<u64>,
    /// Pause between the parts of a multi-part reply (the Salesbot must read the field before
    /// the next part overwrites it).
    #[serde(default)]
    pub reply_part_delay_ms: u64,
    /// The most customer messages a conversation keeps waiting for an answer; older ones fall
    /// off (recorded in the timeline).
    #[serde(default = "default_max_pending")]
    pub max_pending_messages: usize,
    /// The longest customer message kept, in bytes; a longer text is cut and marked.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The most bytes of unanswered customer messages kept (and so sent in one dispatch);
    /// the oldest fall off beyond it (recorded in the timeline).
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: usize,
    /// The hard cap of one stored snapshot, in bytes: a larger one is trimmed
    /// ([`crate::Conversation::trim`]) before it is written.
    #[serde(default = "default_max_snapshot_bytes")]
    pub max_snapshot_bytes: usize,
}

fn default_max_snapshot_bytes() -> usize {
    1024 * 1024
}

fn default_max_pending() -> usize {
    50
}

fn default_max_message_bytes() -> usize {
    8 * 1024
}

fn default_max_pending_bytes() -> usize {
    64 * 1024
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            debounce_ms: 4_000,
            debounce_max_ms: 15_000,
            human_lease_ms: Some(120 * 60_000),
            lease_nudge_ms: 10 * 60_000,
            scheduling_timeout_ms: 30 * 60_000,
            live_window_ms: 24 * 3_600_000,
            retry_base_ms: 1_000,
            retry_max_ms: 5 * 60_000,
            dead_letter_after_ms: 24 * 3_600_000,
            notes: true,
            auto_takeover_on_human_reply: true,
            conversation_idle_ms: Some(24 * 3_600_000),
            max_effect_age_ms: Some(60 * 60_000),
            reply_part_delay_ms: 1_500,
            max_pending_messages: default_max_pending(),
            max_message_bytes: default_max_message_bytes(),
            max_pending_bytes: default_max_pending_bytes(),
            max_snapshot_bytes: default_max_snapshot_bytes(),
        }
    }
}

impl Policy {
    /// Delay before retry number `attempt` (1-based): exponential, capped.
    pub fn retry_delay(&self, attempt: u32) -> u64 {
        let factor = 1u64 << attempt.saturating_sub(1).min(30);
        self.retry_base_ms
            .saturating_mul(factor)
            .min(self.retry_max_ms)
    }
}
