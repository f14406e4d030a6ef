//! Dead letters an operator can list: what conversa received or owed and could not act on.
//!
//! Today one kind is recorded here: `webhook_item`, an item of a Kommo webhook that could not
//! be read (a message without `contact_id`, a lead id that is not a number…). The rest of its
//! body was applied and answered 2xx, so Kommo does not resend it; the record keeps the item's
//! key and error for someone to look at (`GET /dead-letters`).
//!
//! The records are one bounded JSON list under the store value `dead-letters` (the newest
//! [`KEPT`]); appends are serialised inside a process. Like the custom sellers, two nodes
//! appending in the same instant may lose one record: a record is a diagnostic, the webhook
//! answer and the log line (WARN) carry the same facts.

use std::sync::Arc;

use conversa_actors::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use utoipa::ToSchema;

/// Store value holding the list.
pub const KEY: &str = "dead-letters";
/// How many records are kept (the oldest fall off).
pub const KEPT: usize = 500;

/// One thing conversa could not act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"at": 1767225603000u64, "kind": "webhook_item",
    "key": "message[add][1][contact_id]", "error": "missing"}))]
pub struct DeadLetter {
    /// When it was recorded (Unix milliseconds).
    pub at: u64,
    /// `webhook_item`.
    pub kind: String,
    /// The key at fault (bracket form for webhook items).
    pub key: String,
    pub error: String,
}

/// Appends to and reads the list.
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

    /// Adds `records`, keeping the newest [`KEPT`].
    pub async fn record(&self, records: Vec<DeadLetter>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let _one_writer = self.write.lock().await;
        let mut list = self.list().await?;
        list.extend(records);
        let excess = list.len().saturating_sub(KEPT);
        list.drain(..excess);
        let bytes = serde_json::to_vec(&list).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store.put_value(KEY, &bytes).await
    }

    /// Every kept record, oldest first.
    pub async fn list(&self) -> Result<Vec<DeadLetter>, StoreError> {
        match self.store.get_value(KEY).await? {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{KEY}: {e}"))),
        }
    }
}
