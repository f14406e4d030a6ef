//! The boundary to the outside world: whoever runs an outbox entry.
//!
//! The core knows that a dispatch must reach n8n, a reply the customer and a note the lead, but
//! not how: the binary plugs in an n8n client and a Kommo client; tests plug in recorders. An
//! effect kind without an executor stays in the outbox (and is counted) until one is configured:
//! nothing is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::contact::ContactKey;
use crate::effect::Effect;
use crate::message::{Links, SellerRef};
use crate::timeline::Entry;

/// One outbox entry to execute, with the conversation context an executor needs.
#[derive(Clone, Debug)]
pub struct Job {
    pub key: ContactKey,
    /// The entry id: the `dispatch_id` for dispatches. Stable across retries; use it as the
    /// idempotency key.
    pub id: String,
    pub effect: Effect,
    /// 1 for the first try.
    pub attempt: u32,
    pub links: Links,
    pub phase: &'static str,
    pub seller: Option<SellerRef>,
    /// The latest timeline entries, oldest first (context for n8n).
    pub history: Vec<Entry>,
    /// Marked while a step that must not be repeated (a Salesbot run) may have happened.
    pub committed: Commitment,
    /// Links the executor found while running (e.g. the lead Kommo names for the contact):
    /// applied to the conversation with the result, so the next job need not look again.
    pub found: FoundLinks,
}

/// Links an executor discovered, handed back to the conversation with the job's result.
#[derive(Clone, Debug, Default)]
pub struct FoundLinks(Arc<Mutex<Option<Links>>>);

impl FoundLinks {
    pub fn set(&self, links: Links) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(links);
    }

    pub fn take(&self) -> Option<Links> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Whether an execution may have passed its point of no return.
///
/// The engine bounds every execution with an overall timeout and drops the executor's future
/// when it fires. While unmarked that is a plain retry; while marked, the unrepeatable request
/// may have reached the other side, so the timeout counts as [`ExecError::Uncertain`]
/// (recorded, never retried) — the same answer the executor itself gives when that request
/// fails with a 5xx or a network error. The executor marks it as the request goes out and
/// clears it when an answer proves nothing happened (a 429 or a 401 before a retry).
#[derive(Clone, Debug, Default)]
pub struct Commitment(Arc<AtomicBool>);

impl Commitment {
    /// The unrepeatable request is about to leave.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// An answer proved that the request was not carried out.
    pub fn clear(&self) {
        self.0.store(false, Ordering::Release);
    }

    pub fn is_marked(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// What an overall timeout means for this execution.
    pub fn timeout_outcome(&self) -> ExecError {
        if self.is_marked() {
            ExecError::Uncertain(
                "timed out while the request that must not be repeated was out".into(),
            )
        } else {
            ExecError::Retry("timed out".into())
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    /// Worth trying again later (network error, 5xx, 429).
    #[error("{0}")]
    Retry(String),
    /// Trying again cannot help (4xx): dead-letter it.
    #[error("{0}")]
    Permanent(String),
    /// It may or may not have happened (e.g. a 5xx after the request reached the other side)
    /// and trying again could do it twice: recorded as unknown, never retried.
    #[error("outcome unknown: {0}")]
    Uncertain(String),
    /// The conversation has no lead to deliver to (none linked, none found in Kommo).
    #[error("no lead: {0}")]
    NoLead(String),
}

#[async_trait]
pub trait Executor: Send + Sync + 'static {
    async fn execute(&self, job: &Job) -> Result<(), ExecError>;
}

/// Who executes each kind of external effect.
#[derive(Clone, Default)]
pub struct Executors {
    /// n8n dispatches.
    pub dispatch: Option<Arc<dyn Executor>>,
    /// Replies to the customer (Kommo reply channel).
    pub reply: Option<Arc<dyn Executor>>,
    /// Notes on the lead (Kommo).
    pub note: Option<Arc<dyn Executor>>,
}

impl Executors {
    pub fn for_effect(&self, effect: &Effect) -> Option<&Arc<dyn Executor>> {
        match effect {
            Effect::Dispatch(_) => self.dispatch.as_ref(),
            Effect::DeliverReply { .. } => self.reply.as_ref(),
            Effect::AddNote { .. } => self.note.as_ref(),
        }
    }
}
