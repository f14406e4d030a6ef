//! The engine: registry, activation, supervision and passivation of contact actors.
//!
//! Actors are virtual (as in Orleans): [`Engine::apply`] finds the contact's actor or activates
//! one by loading its snapshot; an idle actor is passivated after `idle_timeout` and its timers
//! keep running in the [timer service](crate::timers) and the store's wake index. Start-up
//! re-arms due timers and resumes pending outbox entries from the store's indexes, so its cost
//! does not grow with the number of stored contacts.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use ractor::Actor;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::info;

use crate::clock::now_millis;
use crate::contact::ContactKey;
use crate::conversation::Conversation;
pub use crate::error::EngineError;
use crate::event::Event;
use crate::executor::{ExecError, Executors};
use crate::mailbox::{Applied, ContactMsg};
pub use crate::node::DeadLetterNotice;
use crate::node::{Core, Reports, Stats};

/// How many dead-letter notices wait for a slow receiver.
const DEAD_LETTER_NOTICES: usize = 1024;
use crate::policy::Policy;
use crate::store::Store;
use crate::supervisor::Supervisor;
use crate::timers::{self};

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

/// How far an outbox entry got while a caller followed it ([`Engine::follow`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// It left the outbox: done (`Ok`) or dead-lettered (`Err`).
    Finished(Result<(), ExecError>),
    /// Still in the outbox when the wait ended; `last` is its latest execution, if any.
    Waiting { last: Option<Result<(), ExecError>> },
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
            dead_letters: tokio::sync::broadcast::channel(DEAD_LETTER_NOTICES).0,
            supervisor: OnceLock::new(),
            activate: crate::actor::activate,
            waking: tokio::sync::Semaphore::new(crate::node::WAKE_CONCURRENCY),
        });
        let (supervisor, _) = Actor::spawn(None, Supervisor, Arc::downgrade(&core))
            .await
            .map_err(|e| EngineError::ActorFailed(e.to_string()))?;
        let _ = core.supervisor.set(supervisor.get_cell());

        let tasks = vec![
            tokio::spawn(timers::run(
                Arc::downgrade(&core) as std::sync::Weak<dyn timers::WakeTarget>,
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

    /// Every effect given up on from now on, as it happens (a receiver that falls more than
    /// 1024 behind misses the oldest; the conversations keep them all the same).
    pub fn dead_letters(&self) -> tokio::sync::broadcast::Receiver<DeadLetterNotice> {
        self.core.dead_letters.subscribe()
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
