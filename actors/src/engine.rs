//! The engine: registry, activation, supervision and passivation of contact actors.
//!
//! Actors are virtual (as in Orleans): [`Engine::apply`] finds the contact's actor or activates
//! one by loading its snapshot; an idle actor is passivated after `idle_timeout` and its timers
//! keep running in the [timer service](crate::timers) and the store's wake index. Start-up
//! re-arms due timers and resumes pending outbox entries from the store's indexes, so its cost
//! does not grow with the number of stored contacts.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorId};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actor::{Applied, ContactActor, ContactArgs, ContactMsg};
use crate::clock::now_millis;
use crate::contact::ContactKey;
use crate::conversation::Conversation;
use crate::event::Event;
use crate::executor::{ExecError, Executors};
use crate::policy::Policy;
use crate::registry::{Delivery, Slot};
use crate::store::{Store, StoreError};
use crate::supervisor::Supervisor;
use crate::timers::{self, TimerHandle};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub policy: Policy,
    /// This node's name in outbox claims; a random suffix is added per process so a restarted
    /// node never mistakes its predecessor's claims for its own running work.
    pub node_name: String,
    /// An actor idle this long is passivated.
    pub idle_timeout: Duration,
    /// How long a claimed outbox entry is reserved for this node (must exceed
    /// `execute_timeout`): after a crash, another node or the restarted one takes over then.
    pub claim_lease: Duration,
    /// The longest one execution of an outbox entry may take.
    pub execute_timeout: Duration,
    /// How often the store's wake index is swept for due timers.
    pub sweep_interval: Duration,
    /// Pause before retrying something the store refused (it was down).
    pub retry_delay: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            node_name: "conversa".into(),
            idle_timeout: Duration::from_secs(600),
            claim_lease: Duration::from_secs(30),
            execute_timeout: Duration::from_secs(20),
            sweep_interval: Duration::from_secs(5),
            retry_delay: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The store is down: answer 503, nothing changed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Too many concurrent writers on one contact: answer 503, nothing changed.
    #[error("contact too contended; try again")]
    Contended,
    /// The contact's actor failed while handling the request: answer 500.
    #[error("contact actor failed: {0}")]
    ActorFailed(String),
    #[error("stored data corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => EngineError::Unavailable(m),
            StoreError::Conflict { .. } => EngineError::Contended,
            StoreError::Corrupt(m) => EngineError::Corrupt(m),
        }
    }
}

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
        },
        Effect::DeliverReply { .. } => "deliver_reply",
        Effect::AddNote { .. } => "add_note",
    }
}

/// A point-in-time copy of the engine's counters.
#[derive(Clone, Debug, Serialize)]
pub struct EngineStats {
    pub node_id: String,
    pub store_backend: &'static str,
    pub active_actors: usize,
    pub activations: u64,
    pub passivations: u64,
    pub restarts: u64,
    pub conflicts: u64,
    pub snapshot_writes: u64,
    pub snapshot_write_avg_micros: u64,
    pub effects_executed: u64,
    pub effects_retried: u64,
    pub effects_failed: u64,
    pub effects_running: usize,
    pub events: BTreeMap<String, u64>,
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
    supervisor: OnceLock<ActorCell>,
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
    changed: Notify,
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

    fn latest(&self, id: &str) -> Option<Report> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().find(|r| r.id == id).cloned()
    }
}

/// How far an outbox entry got while a caller followed it ([`Engine::follow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// It left the outbox: done (`Ok`) or dead-lettered (`Err`).
    Finished(Result<(), ExecError>),
    /// Still in the outbox when the wait ended; `last` is its latest execution, if any.
    Waiting { last: Option<Result<(), ExecError>> },
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
        let conversation = serde_json::from_slice(&stored.data)
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
                .get_or_try_init(|| self.activate(key, slot.clone()))
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

    async fn activate(
        self: &Arc<Self>,
        key: ContactKey,
        slot: Arc<Slot>,
    ) -> Result<ractor::ActorRef<ContactMsg>, EngineError> {
        let supervisor = self.supervisor.get().expect("supervisor started").clone();
        let args = ContactArgs {
            key,
            core: self.clone(),
            slot: slot.clone(),
        };
        match Actor::spawn_linked(None, ContactActor, args, supervisor).await {
            Ok((actor, _join)) => {
                self.by_actor.insert(actor.get_id(), (key, slot));
                Ok(actor)
            }
            Err(e) => {
                // pre_start failed: the store could not load the snapshot. The answer names
                // the store's error, not the actor framework's wording around it.
                let text = e.to_string();
                if text.contains("corrupt") {
                    Err(EngineError::Corrupt(text))
                } else {
                    let cause = text
                        .find("store unavailable: ")
                        .map(|at| text[at + "store unavailable: ".len()..].to_owned())
                        .unwrap_or_else(|| "the conversation could not be loaded".to_owned());
                    Err(EngineError::Unavailable(cause))
                }
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

/// The running engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    core: Arc<Core>,
    tasks: Arc<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Starts the supervisor, the timer service (whose first sweep re-arms due timers) and the
    /// passivation sweep, and resumes contacts with pending outbox entries.
    pub async fn start(
        store: Arc<dyn Store>,
        executors: Executors,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        store.ping().await?;
        let (timers, timer_rx) = timers::channel();
        let node_id = format!("{}-{:x}", config.node_name, random_suffix());
        let core = Arc::new(Core {
            store,
            executors,
            policy: config.policy.clone(),
            node_id,
            claim_lease_ms: config.claim_lease.as_millis() as u64,
            execute_timeout: config.execute_timeout,
            retry_delay: config.retry_delay,
            registry: DashMap::new(),
            executing: DashMap::new(),
            by_actor: DashMap::new(),
            timers,
            stats: Stats::default(),
            reports: Reports::default(),
            supervisor: OnceLock::new(),
        });
        let (supervisor, _) = Actor::spawn(None, Supervisor, Arc::downgrade(&core))
            .await
            .map_err(|e| EngineError::ActorFailed(e.to_string()))?;
        let _ = core.supervisor.set(supervisor.get_cell());

        let tasks = vec![
            tokio::spawn(timers::run(
                Arc::downgrade(&core),
                timer_rx,
                config.sweep_interval,
            )),
            tokio::spawn(passivation(Arc::downgrade(&core), config.idle_timeout)),
        ];

        let pending = core.store.pending_outbox(100_000).await?;
        info!(
            node = %core.node_id,
            store = core.store.backend(),
            pending_outbox = pending.len(),
            "engine started"
        );
        for key in pending {
            core.wake(key);
        }
        Ok(Engine {
            core,
            tasks: Arc::new(tasks),
        })
    }

    /// Applies `event` to the contact's conversation; answers once the change is durable.
    pub async fn apply(&self, key: ContactKey, event: Event) -> Result<Applied, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.core
            .send(key, ContactMsg::Apply { event, reply })
            .await?;
        rx.await.unwrap_or_else(|_| {
            Err(EngineError::ActorFailed(
                "the contact's actor stopped while handling the request".into(),
            ))
        })
    }

    /// Follows the outbox entry `id` (e.g. a reply [`Engine::apply`] just queued, named in
    /// [`crate::Outcome::queued`]) until it leaves the outbox or `budget` runs out. Only
    /// executions of this process are seen: the node that queues an entry runs it.
    pub async fn follow(&self, id: &str, budget: Duration) -> Progress {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let changed = self.core.reports.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let latest = self.core.reports.latest(id);
            if let Some(r) = &latest
                && r.finished
            {
                return Progress::Finished(r.result.clone());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Progress::Waiting {
                    last: latest.map(|r| r.result),
                };
            }
        }
    }

    /// Wakes the contact now (runs due timers and outbox entries).
    pub async fn wake(&self, key: ContactKey) -> Result<(), EngineError> {
        self.core.send(key, ContactMsg::Wake).await
    }

    /// The stored conversation and its version, read from the store (not from an actor, so it
    /// is current even when another node wrote last).
    pub async fn conversation(
        &self,
        key: &ContactKey,
    ) -> Result<Option<(Conversation, u64)>, EngineError> {
        Ok(self.core.load(key).await?)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    pub fn policy(&self) -> &Policy {
        &self.core.policy
    }

    pub fn node_id(&self) -> &str {
        &self.core.node_id
    }

    pub fn active_actors(&self) -> usize {
        self.core.registry.len()
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.core.stats;
        let saves = s.saves.load(Ordering::Relaxed);
        EngineStats {
            node_id: self.core.node_id.clone(),
            store_backend: self.core.store.backend(),
            active_actors: self.core.registry.len(),
            activations: s.activations.load(Ordering::Relaxed),
            passivations: s.passivations.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
            conflicts: s.conflicts.load(Ordering::Relaxed),
            snapshot_writes: saves,
            snapshot_write_avg_micros: s.save_micros.load(Ordering::Relaxed) / saves.max(1),
            effects_executed: s.executed_ok.load(Ordering::Relaxed),
            effects_retried: s.executed_retry.load(Ordering::Relaxed),
            effects_failed: s.executed_failed.load(Ordering::Relaxed),
            effects_running: self.core.executing.len(),
            events: s
                .events
                .iter()
                .map(|e| (e.key().to_string(), e.value().load(Ordering::Relaxed)))
                .collect(),
        }
    }

    /// Stops background work and waits (up to `grace`) for running effects to report back.
    /// Every acknowledged change is already durable, so this only shortens the redo after a
    /// restart.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while !self.core.executing.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for t in self.tasks.iter() {
            t.abort();
        }
    }
}

/// Every quarter of the idle timeout, asks idle actors to passivate.
async fn passivation(core: std::sync::Weak<Core>, idle: Duration) {
    let every = (idle / 4).max(Duration::from_millis(50));
    let idle_ms = idle.as_millis() as u64;
    loop {
        tokio::time::sleep(every).await;
        let Some(core) = core.upgrade() else { return };
        let now = now_millis();
        let idle_slots: Vec<_> = core
            .registry
            .iter()
            .filter(|e| now.saturating_sub(e.value().idle_since()) >= idle_ms)
            .map(|e| e.value().clone())
            .collect();
        for slot in idle_slots {
            if let Some(actor) = slot.actor.get() {
                // Bypass `deliver` so the check does not count as activity.
                let _ = actor.send_message(ContactMsg::Passivate { idle_ms });
            }
        }
    }
}

fn random_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() & 0xffff_ffff
}
