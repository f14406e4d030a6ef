//! What one engine node shares between the engine, its contact actors and its background
//! tasks ([`Core`]): the store, the executors, the registry of live actors, the timers, the
//! counters and the latest delivery reports; and how a message reaches a contact's actor
//! ([`Core::send`], activating it when needed).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{ActorCell, ActorId, ActorRef};
use tokio::sync::Notify;
use tracing::warn;

use crate::clock::now_millis;
use crate::contact::ContactKey;
use crate::conversation::Conversation;
use crate::error::EngineError;
use crate::executor::{ExecError, Executors};
use crate::mailbox::ContactMsg;
use crate::policy::Policy;
use crate::registry::{Delivery, Slot};
use crate::store::{Store, StoreError};
use crate::timers::{TimerHandle, WakeTarget};

/// Counters shown by `/stats` and `/metrics`.
#[derive(Default)]
pub(crate) struct Stats {
    pub activations: AtomicU64,
    pub passivations: AtomicU64,
    pub restarts: AtomicU64,
    pub conflicts: AtomicU64,
    pub saves: AtomicU64,
    pub save_micros: AtomicU64,
    pub executed_ok: AtomicU64,
    pub executed_retry: AtomicU64,
    pub executed_failed: AtomicU64,
    pub events: DashMap<&'static str, AtomicU64>,
}

impl Stats {
    pub fn count_event(&self, name: &'static str) {
        self.events
            .entry(name)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_events_total", "type" => name).increment(1);
    }

    pub fn count_execution(
        &self,
        kind: &'static str,
        result: &Result<(), ExecError>,
        took: Duration,
    ) {
        let (counter, label) = match result {
            Ok(()) => (&self.executed_ok, "ok"),
            Err(ExecError::Retry(_)) => (&self.executed_retry, "retry"),
            Err(ExecError::Permanent(_)) => (&self.executed_failed, "failed"),
            Err(ExecError::Uncertain(_)) => (&self.executed_failed, "unknown"),
            Err(ExecError::NoLead(_)) => (&self.executed_failed, "no_lead"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_effects_total", "kind" => kind, "result" => label).increment(1);
        metrics::histogram!("conversa_effect_seconds", "kind" => kind).record(took.as_secs_f64());
    }

    pub fn count_dead_letter(&self, kind: &'static str) {
        metrics::counter!("conversa_effects_dead_lettered_total", "kind" => kind).increment(1);
    }

    pub fn record_save(&self, took: Duration) {
        self.saves.fetch_add(1, Ordering::Relaxed);
        self.save_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        metrics::histogram!("conversa_store_seconds", "op" => "save").record(took.as_secs_f64());
    }

    pub fn record_load(&self, took: Duration) {
        metrics::histogram!("conversa_store_seconds", "op" => "load").record(took.as_secs_f64());
    }

    pub fn activation(&self) {
        self.activations.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_actor_activations_total").increment(1);
    }

    pub fn passivation(&self) {
        self.passivations.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_actor_passivations_total").increment(1);
    }

    pub fn restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_actor_restarts_total").increment(1);
    }

    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("conversa_store_cas_conflicts_total").increment(1);
    }

    /// A reply from n8n: accepted for delivery, or dropped with its reason.
    pub fn reply(&self, dropped: Option<&'static str>) {
        match dropped {
            None => metrics::counter!("conversa_replies_total", "result" => "accepted", "reason" => "")
                .increment(1),
            Some(reason) => {
                metrics::counter!("conversa_replies_total", "result" => "dropped", "reason" => reason)
                    .increment(1)
            }
        }
    }
}

/// The metric label of an effect: `dispatch_message`, `deliver_reply`, `add_note`...
pub(crate) fn effect_label(effect: &crate::effect::Effect) -> &'static str {
    use crate::effect::{DispatchKind, Effect};
    match effect {
        Effect::Dispatch(d) => match d.kind {
            DispatchKind::Message => "dispatch_message",
            DispatchKind::Proactive => "dispatch_proactive",
            DispatchKind::Scheduling => "dispatch_scheduling",
            DispatchKind::Released => "dispatch_released",
            DispatchKind::Missed => "dispatch_missed",
        },
        Effect::DeliverReply { .. } => "deliver_reply",
        Effect::AddNote { .. } => "add_note",
    }
}

/// State shared by the engine, its actors and its background tasks.
pub(crate) struct Core {
    pub store: Arc<dyn Store>,
    pub executors: Executors,
    pub policy: Policy,
    pub node_id: String,
    pub claim_lease_ms: u64,
    pub execute_timeout: Duration,
    pub retry_delay: Duration,
    pub registry: DashMap<ContactKey, Arc<Slot>>,
    /// Outbox entry ids being executed by this process.
    pub executing: DashMap<String, ()>,
    pub by_actor: DashMap<ActorId, (ContactKey, Arc<Slot>)>,
    pub timers: TimerHandle,
    pub stats: Stats,
    /// The latest results of reply deliveries, for callers following one ([`Engine::follow`]).
    pub reports: Reports,
    /// Every effect given up on, as it happens ([`crate::Engine::dead_letters`]).
    pub dead_letters: tokio::sync::broadcast::Sender<DeadLetterNotice>,
    /// The supervisor the contact actors are linked to.
    pub supervisor: OnceLock<ActorCell>,
    /// Spawns a contact's actor (installed by the engine: the node routes messages without
    /// knowing the actor's type).
    pub activate: Activate,
    /// Background wakes (timers, outbox recovery) running at once, at most
    /// [`WAKE_CONCURRENCY`]: ten thousand contacts due after a downtime load a few dozen at a
    /// time instead of all at once (which timed out the store for everyone, start-up included).
    pub waking: tokio::sync::Semaphore,
}

/// How many background wakes run at once (see [`Core::waking`]).
pub(crate) const WAKE_CONCURRENCY: usize = 64;

/// How the node spawns a contact's actor when a message finds none.
pub(crate) type Activate =
    fn(
        Arc<Core>,
        ContactKey,
        Arc<Slot>,
    ) -> Pin<Box<dyn Future<Output = Result<ActorRef<ContactMsg>, EngineError>> + Send>>;

/// An effect given up on; the conversation keeps it ([`crate::Conversation::dead_letters`])
/// for an operator to replay or drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterNotice {
    pub key: ContactKey,
    /// The outbox id (a dispatch's `dispatch_id`).
    pub id: String,
    /// `dispatch_message`, `deliver_reply`, `add_note`...
    pub kind: &'static str,
    pub error: String,
    /// Unix milliseconds.
    pub at: crate::contact::Millis,
}

/// How many delivery results are remembered for callers following them.
const REPORTS_KEPT: usize = 1024;

/// What became of one execution of an outbox entry, as recorded by its conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub id: String,
    pub result: Result<(), ExecError>,
    /// The entry left the outbox (done, or dead-lettered); otherwise it waits for a retry or,
    /// for a reply in parts, for its next part.
    pub finished: bool,
}

/// A bounded ring of recent [`Report`]s and a signal for each new one.
#[derive(Default)]
pub(crate) struct Reports {
    ring: Mutex<VecDeque<Report>>,
    pub changed: Notify,
}

impl Reports {
    pub fn record(&self, report: Report) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
            if ring.len() == REPORTS_KEPT {
                ring.pop_front();
            }
            ring.push_back(report);
        }
        self.changed.notify_waiters();
    }

    pub fn latest(&self, id: &str) -> Option<Report> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().find(|r| r.id == id).cloned()
    }
}
impl Core {
    /// Whether this node has an executor for `effect` (the others wait in the outbox).
    pub(crate) fn can_run(&self, effect: &crate::effect::Effect) -> bool {
        self.executors.for_effect(effect).is_some()
    }

    pub async fn load(&self, key: &ContactKey) -> Result<Option<(Conversation, u64)>, StoreError> {
        let started = std::time::Instant::now();
        let stored = self.store.load(key).await;
        self.stats.record_load(started.elapsed());
        let Some(stored) = stored? else {
            return Ok(None);
        };
        let conversation = Conversation::from_snapshot(&stored)
            .map_err(|e| StoreError::Corrupt(format!("snapshot of {key}: {e}")))?;
        Ok(Some((conversation, stored.version)))
    }

    /// Hands `msg` to the contact's actor, activating it if needed; keeps arrival order across
    /// passivation and restarts (see [`crate::registry`]).
    pub async fn send(
        self: &Arc<Self>,
        key: ContactKey,
        msg: ContactMsg,
    ) -> Result<(), EngineError> {
        let mut msg = msg;
        loop {
            let slot = self
                .registry
                .entry(key)
                .or_insert_with(|| Arc::new(Slot::new()))
                .clone();
            let actor = match slot
                .actor
                .get_or_try_init(|| (self.activate)(self.clone(), key, slot.clone()))
                .await
            {
                Ok(actor) => actor.clone(),
                Err(e) => {
                    slot.mark_stopped();
                    self.forget(&key, &slot);
                    return Err(e);
                }
            };
            match slot.deliver(&actor, msg) {
                Delivery::Sent => return Ok(()),
                Delivery::Closing(back) => {
                    msg = back;
                    slot.wait_stopped().await;
                }
                Delivery::Dead(back) => {
                    msg = back;
                    slot.mark_stopped();
                    self.forget(&key, &slot);
                }
                Delivery::Failed(e) => return Err(EngineError::ActorFailed(e)),
            }
        }
    }

    /// Removes `slot` from the registry if it is still the contact's current slot.
    pub fn forget(&self, key: &ContactKey, slot: &Arc<Slot>) {
        self.registry.remove_if(key, |_, s| Arc::ptr_eq(s, slot));
    }

    /// Wakes the contact in the background (timers, outbox).
    pub fn wake(self: &Arc<Self>, key: ContactKey) {
        let core = self.clone();
        tokio::spawn(async move {
            let Ok(_turn) = core.waking.acquire().await else {
                return; // closed: the engine is going away
            };
            if let Err(e) = core.send(key, ContactMsg::Wake).await {
                warn!(contact = %key, error = %e, "could not wake contact; retrying later");
                core.retry_wake_later(key);
            }
        });
    }

    pub fn retry_wake_later(&self, key: ContactKey) {
        let at = now_millis() + self.retry_delay.as_millis() as u64;
        self.timers.arm(key, at);
    }

    /// Brings an execution result back to the contact, however long the store is down.
    pub async fn deliver_result(
        self: &Arc<Self>,
        key: ContactKey,
        id: String,
        result: Result<(), ExecError>,
        found: Option<crate::message::Links>,
    ) {
        loop {
            let msg = ContactMsg::Executed {
                id: id.clone(),
                result: result.clone(),
                found: found.clone(),
            };
            match self.send(key, msg).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(contact = %key, dispatch_id = %id, error = %e, "execution result waits for the store");
                    tokio::time::sleep(self.retry_delay).await;
                }
            }
        }
    }
}

impl WakeTarget for Core {
    fn wake(self: Arc<Self>, key: ContactKey) {
        Core::wake(&self, key);
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
