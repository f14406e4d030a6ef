//! Dead letters an operator can list and act on: what conversa received or owed and could not
//! act on.
//!
//! Two families are recorded here:
//! * `webhook_item` — an item of a Kommo webhook that could not be read (a message without
//!   `contact_id`, a lead id that is not a number…). The rest of its body was applied and
//!   answered 2xx, so Kommo does not resend it; the record keeps the item's key and error.
//!   It can be dropped, not replayed (there is nothing valid to apply).
//! * an effect given up on (`dispatch_message`, `deliver_reply`, `add_note`…): its retries ran
//!   out (`DEAD_LETTER_AFTER_MINUTES`) or trying again could not help. The effect itself is
//!   kept by its conversation ([`conversa_actors::Conversation::dead_letters`]), durable with
//!   the conversation; this list is the index an operator reads (`GET /dead-letters`,
//!   `conversa dead-letters list`), fed by the engine's notices ([`follow`]). Replaying one
//!   ([`crate::flows::dead_letters`]) asks its conversation, which fences it like any effect.
//!
//! The records are one bounded JSON list under the store value `dead-letters` (the newest
//! [`KEPT`]); writes are serialised inside a process. Two nodes writing in the same instant may
//! lose one record (a conversation still keeps its effect, and its timeline says
//! `dead_lettered`); the engine's notices reach only the node that gave up, and a crash
//! between the conversation's write and this one loses the record, not the effect.

use std::sync::Arc;

use conversa_actors::Engine;
use conversa_actors::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::warn;
use utoipa::ToSchema;

/// Store value holding the list.
pub const KEY: &str = "dead-letters";
/// How many records are kept (the oldest fall off).
pub const KEPT: usize = 500;
/// The kind of an unreadable webhook item.
pub const WEBHOOK_ITEM: &str = "webhook_item";

/// One thing conversa could not act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "33981183-1298200-4", "at": 1767225603000u64,
    "kind": "dispatch_message", "contact_id": 1298200, "key": "33981183-1298200-4",
    "error": "n8n answered 404: the workflow is not active"}))]
pub struct DeadLetter {
    /// What `POST /dead-letters/{id}/replay` and `DELETE /dead-letters/{id}` name: an effect's
    /// outbox id (a dispatch's `dispatch_id`), `w<at>-<n>` for a webhook item.
    #[serde(default)]
    pub id: String,
    /// When it was recorded (Unix milliseconds).
    pub at: u64,
    /// `webhook_item`, or the effect: `dispatch_message`, `dispatch_proactive`,
    /// `dispatch_scheduling`, `dispatch_released`, `dispatch_missed`, `deliver_reply`,
    /// `add_note`.
    pub kind: String,
    /// The contact whose conversation keeps the effect (effects only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<u64>,
    /// The key at fault (bracket form for webhook items; the outbox id for effects).
    pub key: String,
    pub error: String,
}

impl DeadLetter {
    /// A webhook item that could not be read; `n` tells the items of one body apart, and a
    /// random part the bodies of one millisecond (on any node).
    pub fn webhook_item(at: u64, n: usize, key: String, error: String) -> Self {
        let mut random = [0u8; 4];
        let _ = getrandom::fill(&mut random);
        DeadLetter {
            id: format!("w{at}-{n}-{}", hex::encode(random)),
            at,
            kind: WEBHOOK_ITEM.to_owned(),
            contact_id: None,
            key,
            error,
        }
    }

    pub fn is_webhook_item(&self) -> bool {
        self.kind == WEBHOOK_ITEM
    }
}

/// Appends to, reads and removes from the list.
pub struct DeadLetters {
    store: Arc<dyn Store>,
    write: Mutex<()>,
}

impl DeadLetters {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            write: Mutex::new(()),
        }
    }

    /// Adds `records` (one with an id already listed replaces it), keeping the newest [`KEPT`].
    pub async fn record(&self, records: Vec<DeadLetter>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let _one_writer = self.write.lock().await;
        let mut list = self.list().await?;
        list.retain(|d| !records.iter().any(|r| r.id == d.id));
        list.extend(records);
        let excess = list.len().saturating_sub(KEPT);
        list.drain(..excess);
        self.write_list(&list).await
    }

    /// Removes the record `id`; whether there was one.
    pub async fn remove(&self, id: &str) -> Result<bool, StoreError> {
        let _one_writer = self.write.lock().await;
        let mut list = self.list().await?;
        let before = list.len();
        list.retain(|d| d.id != id);
        if list.len() == before {
            return Ok(false);
        }
        self.write_list(&list).await?;
        Ok(true)
    }

    /// Every kept record, oldest first. Records an earlier version wrote without an id get
    /// one from their time and place.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut list: Vec<DeadLetter> = match self.store.get_value(KEY).await? {
            None => Vec::new(),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{KEY}: {e}")))?,
        };
        for (n, d) in list.iter_mut().enumerate() {
            if d.id.is_empty() {
                d.id = format!("w{}-{n}", d.at);
            }
        }
        Ok(list)
    }

    /// The record `id`, if kept.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        Ok(self.list().await?.into_iter().find(|d| d.id == id))
    }

    async fn write_list(&self, list: &[DeadLetter]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store.put_value(KEY, &bytes).await
    }
}

/// Records every effect the engine gives up on from now on, until the engine stops.
pub fn follow(engine: &Engine, list: Arc<DeadLetters>) -> tokio::task::JoinHandle<()> {
    let mut notices = engine.dead_letters();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let notice = match notices.recv().await {
                Ok(n) => n,
                Err(RecvError::Lagged(missed)) => {
                    warn!(
                        missed,
                        "dead letters came faster than they were listed; their conversations keep them"
                    );
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            warn!(contact = %notice.key, id = %notice.id, kind = notice.kind, error = %notice.error, "effect given up on: kept for an operator (GET /dead-letters)");
            let record = DeadLetter {
                id: notice.id.clone(),
                at: notice.at,
                kind: notice.kind.to_owned(),
                contact_id: Some(notice.key.contact_id),
                key: notice.id,
                error: notice.error,
            };
            if let Err(e) = list.record(vec![record]).await {
                warn!(error = %e, "a dead letter could not be listed; its conversation keeps it");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_items_of_the_same_millisecond_keep_apart() {
        let a = DeadLetter::webhook_item(1, 0, "k".into(), "e".into());
        let b = DeadLetter::webhook_item(1, 0, "k".into(), "e".into());
        assert_ne!(a.id, b.id, "two bodies in one millisecond");
        assert!(a.id.starts_with("w1-0-"));
    }
}
