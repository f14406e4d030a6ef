//! What a note on the lead tells the seller, as data: the conversation says which note and
//! with what facts; the words (Portuguese by default, another language by setting) are the
//! service's (`src/notes.rs`), so the core never writes user-facing text.

use serde::{Deserialize, Deserializer, Serialize};

use crate::message::SellerRef;

/// A note for the seller on the conversation's lead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Note {
    /// A seller took the conversation over (`by`: who asked, and through what).
    TakenOver { seller: SellerRef, by: String },
    /// The bot answers again: released by someone, or the seller's hold ran out.
    BotBack { lease_expired: bool },
    /// The seller's hold returns to the bot in `minutes` unless someone answers.
    LeaseEnding { minutes: u64 },
    /// A marketing event opened the conversation for `seller`.
    ProactiveStarted { trigger: String, seller: SellerRef },
    /// n8n settled the scheduling request; `details` as n8n sent them.
    SchedulingSettled {
        confirmed: bool,
        #[serde(default)]
        details: serde_json::Value,
    },
    /// n8n did not settle the scheduling request in time: the bot answers again.
    SchedulingTimedOut,
    /// n8n could not be called for this dispatch, for good.
    DispatchFailed { dispatch_id: String, error: String },
    /// The reply's remaining parts may not have reached the customer.
    ReplyFailed { error: String, texts: Vec<String> },
    /// A customer's message waited `minutes` and never reached the AI: the seller must answer.
    MessageExpired { minutes: u64 },
    /// `count` customer messages, the first written at `at` (Unix ms), never reached conversa:
    /// Kommo has them, their webhooks did not come.
    MessagesMissed { at: u64, count: usize },
    /// The reply's remaining parts waited `minutes` and were not sent.
    ReplyExpired { minutes: u64, texts: Vec<String> },
    /// A note an earlier version wrote as text (read from an older snapshot's outbox).
    Written { text: String },
}

/// Reads a note, or the text an earlier version stored in its place (`{"text": "..."}`).
pub(crate) fn note_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Note, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Note(Note),
        Text(String),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Note(note) => note,
        Stored::Text(text) => Note::Written { text },
    })
}
