//! The contact actor: the thin shell around one [`Conversation`].
//!
//! It owns the conversation while the contact is active, applies events in arrival order
//! (ractor's mailbox), and for each change: claims the outbox entries it will execute, writes
//! the snapshot with compare-and-set (a conflict means another node wrote first: reload and
//! apply the event again), answers the caller only once the write is durable, then starts the
//! claimed effects on their own tasks (a slow n8n or Kommo never blocks the mailbox) and arms
//! its next wake-up. When the store is down the caller gets `Unavailable` and the in-memory copy
//! is dropped, so nothing unacknowledged survives even in memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, error, warn};

use crate::clock::now_millis;
use crate::contact::{ContactKey, Millis};
use crate::conversation::{Conversation, Outcome, Rejection};
use crate::error::EngineError;
use crate::event::Event;
use crate::executor::{ExecError, Job};
use crate::mailbox::{Applied, ContactMsg};
use crate::node::Core;
use crate::phase::PhaseName;
use crate::registry::Slot;
use crate::store::{IndexUpdate, StoreError};

/// How many times an event is re-applied after version conflicts before giving up.
const MAX_CONFLICTS: usize = 16;
/// How many timeline entries go to executors as history.
const HISTORY: usize = 20;

pub(crate) struct ContactActor;

pub(crate) struct ContactArgs {
    pub key: ContactKey,
    pub core: Arc<Core>,
    pub slot: Arc<Slot>,
}

pub(crate) struct ContactState {
    key: ContactKey,
    core: Arc<Core>,
    slot: Arc<Slot>,
    /// `None` after a failed write: reload before the next event.
    /// Boxed: this state lives inside ractor's processing-loop future, allocated per actor in
    /// size classes, and the conversation is most of it.
    conversation: Option<Box<Conversation>>,
    version: u64,
    /// The version this actor last wrote and the index entries it wrote with it.
    indexed: Option<Indexed>,
}

/// What one save put in the store's indexes (kept per active contact: no heap, no `String`).
#[derive(Clone, Copy)]
struct Indexed {
    version: u64,
    wake_at: Option<Millis>,
    outbox_pending: bool,
    phase: PhaseName,
}

impl Actor for ContactActor {
    type Msg = ContactMsg;
    type State = ContactState;
    type Arguments = ContactArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ContactMsg>,
        args: ContactArgs,
    ) -> Result<ContactState, ActorProcessingErr> {
        let mut state = ContactState {
            key: args.key,
            core: args.core,
            slot: args.slot,
            conversation: None,
            version: 0,
            indexed: None,
        };
        Box::pin(state.load()).await?;
        state.core.stats.activation();
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ContactMsg>,
        state: &mut ContactState,
    ) -> Result<(), ActorProcessingErr> {
        state.slot.mark_stopped();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ContactMsg>,
        msg: ContactMsg,
        state: &mut ContactState,
    ) -> Result<(), ActorProcessingErr> {
        // The work futures are boxed: ractor keeps this handler's future inside every actor's
        // long-lived processing loop, so anything inlined here (the store write, the event) would
        // cost its size in every idle actor. Boxed, it is one short allocation per message.
        match msg {
            ContactMsg::Apply { event, reply } => {
                let result = Box::pin(state.apply(event)).await;
                let _ = reply.send(result);
            }
            ContactMsg::Wake => Box::pin(state.wake()).await,
            ContactMsg::Executed { id, result, found } => {
                Box::pin(state.executed(&myself, id, result, found)).await;
            }
            ContactMsg::Passivate { idle_ms } => {
                let idle = now_millis().saturating_sub(state.slot.idle_since()) >= idle_ms;
                let busy = state.slot.executing.load(Ordering::Relaxed) > 0;
                if idle && !busy && state.slot.close() {
                    state.core.forget(&state.key, &state.slot);
                    // Everything enqueued before the close is ahead of this in the mailbox.
                    let _ = myself.send_message(ContactMsg::Stop);
                }
            }
            ContactMsg::Stop => {
                state.core.stats.passivation();
                myself.stop(Some("passivated".into()));
            }
        }
        Ok(())
    }
}

impl ContactState {
    async fn load(&mut self) -> Result<(), StoreError> {
        let loaded = self.core.load(&self.key).await?;
        let (mut conversation, version) = match loaded {
            Some(found) => found,
            None => (Conversation::new(self.key, now_millis()), 0),
        };
        let core = &self.core;
        conversation
            .outbox
            .release_orphans(&core.node_id, |id| core.executing.contains_key(id));
        self.conversation = Some(Box::new(conversation));
        self.version = version;
        Ok(())
    }

    async fn apply(&mut self, event: Event) -> Result<Applied, EngineError> {
        let event_name = event.name();
        for _ in 0..MAX_CONFLICTS {
            if self.conversation.is_none() {
                self.load().await?;
            }
            let now = now_millis();
            let conversation = self.conversation.as_mut().expect("loaded above");
            let expired = conversation.expire_effects(now, &self.core.policy).changed;
            let outcome = conversation.handle(event.clone(), now, &self.core.policy);
            let changed = expired || outcome.as_ref().is_ok_and(|o| o.changed);
            if !changed {
                // Nothing to write, so no compare-and-set catches a stale copy: confirm that
                // no other node wrote since we loaded before answering from it.
                if !self.core.store.exclusive() {
                    let stored = self.core.store.version(&self.key).await?;
                    if stored != self.version {
                        self.conversation = None;
                        continue;
                    }
                }
                return Ok(self.applied(outcome));
            }
            match self.persist(now).await {
                Ok(claimed) => {
                    self.core.stats.count_event(event_name);
                    if matches!(event, Event::Reply { .. }) {
                        let dropped = outcome.as_ref().ok().and_then(|o| o.dropped);
                        self.core.stats.reply(dropped.map(|d| d.as_str()));
                    }
                    self.start(claimed);
                    return Ok(self.applied(outcome));
                }
                Err(StoreError::Conflict { current }) => {
                    debug!(contact = %self.key, current, "version conflict, reloading");
                    self.core.stats.conflict();
                    self.conversation = None;
                }
                Err(e) => {
                    self.conversation = None;
                    return Err(e.into());
                }
            }
        }
        Err(EngineError::Contended)
    }

    fn applied(&self, outcome: Result<Outcome, Rejection>) -> Applied {
        let conversation = self.conversation.as_ref().expect("loaded");
        Applied {
            outcome,
            phase: conversation.phase().clone(),
            version: self.version,
        }
    }

    /// Applies every due timer, claims due outbox entries, and writes if anything changed.
    async fn wake(&mut self) {
        if self.conversation.is_some() && !self.core.store.exclusive() {
            // Another node may have moved the timers: decide on the stored state.
            match self.core.store.version(&self.key).await {
                Ok(v) if v == self.version => {}
                _ => self.conversation = None,
            }
        }
        for _ in 0..MAX_CONFLICTS {
            if self.conversation.is_none() && self.load().await.is_err() {
                self.core.retry_wake_later(self.key);
                return;
            }
            let now = now_millis();
            let policy = self.core.policy.clone();
            let conversation = self.conversation.as_mut().expect("loaded");
            let changed = conversation.handle_timeout(now, &policy).changed;
            let due_outbox = conversation.has_due_work(now, |e| self.core.can_run(e));
            let next = self.next_wake();
            if !changed && !due_outbox {
                // Woken early (a stale index entry, another node's timer): just re-arm.
                match next {
                    Some(at) => self.core.timers.arm(self.key, at),
                    None => {
                        // The index may still name us; rewrite it so sweeps stop waking us.
                        if self.persist(now).await.is_err() {
                            self.conversation = None;
                        }
                    }
                }
                return;
            }
            match self.persist(now).await {
                Ok(claimed) => {
                    self.start(claimed);
                    return;
                }
                Err(StoreError::Conflict { .. }) => self.conversation = None,
                Err(e) => {
                    warn!(contact = %self.key, error = %e, "wake-up could not be written; retrying");
                    self.conversation = None;
                    self.core.retry_wake_later(self.key);
                    return;
                }
            }
        }
    }

    async fn executed(
        &mut self,
        myself: &ActorRef<ContactMsg>,
        id: String,
        result: Result<(), ExecError>,
        found: Option<crate::message::Links>,
    ) {
        self.core.executing.remove(&id);
        self.slot.executing.fetch_sub(1, Ordering::Relaxed);
        if let Some(links) = found.clone()
            && let Err(e) = self.apply(Event::LinksSeen(links)).await
        {
            debug!(contact = %self.key, error = %e, "found links not recorded yet");
        }
        let event = match &result {
            Ok(()) => Event::EffectDone { id: id.clone() },
            Err(e) => Event::EffectFailed {
                id: id.clone(),
                error: e.to_string(),
                retryable: matches!(e, ExecError::Retry(_)),
                // `Uncertain` is not retryable: the error text says "outcome unknown".
            },
        };
        let kind = self
            .conversation
            .as_ref()
            .and_then(|c| c.outbox.get(&id))
            .map_or("unknown", |e| crate::node::effect_label(&e.effect));
        let failed = result.is_err();
        let applied = self.apply(event).await;
        if applied.is_ok() {
            let gone = self
                .conversation
                .as_ref()
                .is_some_and(|c| c.outbox.get(&id).is_none());
            let dead = self.conversation.as_ref().and_then(|c| {
                c.dead_letters()
                    .iter()
                    .rev()
                    .find(|d| d.id == id && failed && gone)
                    .cloned()
            });
            if let Some(dead) = dead {
                self.core.stats.count_dead_letter(kind);
                // No receiver (nobody lists dead letters) is fine: the conversation keeps it.
                let _ = self.core.dead_letters.send(crate::node::DeadLetterNotice {
                    key: self.key,
                    id: id.clone(),
                    kind,
                    error: dead.error,
                    at: dead.at,
                });
            }
            self.core.reports.record(crate::node::Report {
                id: id.clone(),
                result: result.clone(),
                finished: gone,
            });
        }
        if let Err(e) = applied {
            // Done but not recorded: keep it in memory and try again shortly. A crash now
            // re-executes the entry after its claim expires (same id: receivers dedupe).
            warn!(contact = %self.key, dispatch_id = %id, error = %e, "outcome not recorded yet");
            self.core.executing.insert(id.clone(), ());
            self.slot.executing.fetch_add(1, Ordering::Relaxed);
            let msg = ContactMsg::Executed { id, result, found };
            ractor::time::send_after(self.core.retry_delay, myself.get_cell(), move || msg);
        }
    }

    /// Claims what this node will execute, writes the snapshot (indexes first) and returns the
    /// claimed jobs. On error nothing was acknowledged and the caller drops the in-memory copy.
    async fn persist(&mut self, now: Millis) -> Result<Vec<Job>, StoreError> {
        let core = self.core.clone();
        let conversation = self.conversation.as_mut().expect("loaded");
        let claimed = conversation.poll_work(&core.node_id, now, now + core.claim_lease_ms, |e| {
            core.can_run(e)
        });
        let index = IndexUpdate {
            wake_at: conversation.poll_timeout(|e| core.can_run(e)),
            outbox_pending: !conversation.outbox().is_empty(),
            phase: conversation.phase().kind(),
            // What our own write of the version we replace put in the indexes.
            previous: self
                .indexed
                .take()
                .filter(|i| i.version == self.version)
                .map(|i| {
                    Box::new(IndexUpdate {
                        wake_at: i.wake_at,
                        outbox_pending: i.outbox_pending,
                        phase: i.phase,
                        previous: None,
                    })
                }),
        };
        let encode = |c: &mut Conversation| {
            c.to_snapshot()
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        let mut snapshot = encode(conversation)?;
        // The cap bounds what the store holds of the conversation: head and logs.
        let cap = core.policy.max_snapshot_bytes;
        let before = conversation.stored_bytes(&snapshot);
        if before > cap {
            conversation.trim(now, cap);
            snapshot = encode(conversation)?;
            metrics::counter!("conversa_snapshots_trimmed_total").increment(1);
            let after = conversation.stored_bytes(&snapshot);
            if after > cap {
                error!(contact = %self.key, before, after, cap, "snapshot still over its cap after trimming");
            } else {
                warn!(contact = %self.key, before, after, cap, "snapshot over its cap: trimmed");
            }
        }
        let started = std::time::Instant::now();
        let version = core
            .store
            .write(&self.key, self.version, &snapshot, &index)
            .await?;
        core.stats.record_save(started.elapsed());
        conversation.saved(&snapshot);
        self.version = version;
        if let Some(at) = index.wake_at {
            core.timers.arm(self.key, at);
        }
        self.indexed = Some(Indexed {
            version,
            wake_at: index.wake_at,
            outbox_pending: index.outbox_pending,
            phase: index.phase,
        });
        if claimed.is_empty() {
            // The common case: nothing to run, so no history to copy on this hot path.
            return Ok(Vec::new());
        }
        let history: Vec<_> = {
            let t = conversation.timeline();
            t.entries()
                .skip(t.len().saturating_sub(HISTORY))
                .cloned()
                .collect()
        };
        Ok(claimed
            .into_iter()
            .filter_map(|id| {
                let entry = conversation.outbox().get(&id)?;
                Some(Job {
                    key: self.key,
                    id,
                    effect: entry.effect.clone(),
                    attempt: entry.attempts + 1,
                    links: conversation.links().clone(),
                    phase: conversation.phase().name(),
                    seller: conversation.phase().seller().cloned(),
                    history: history.clone(),
                    committed: Default::default(),
                    found: Default::default(),
                })
            })
            .collect())
    }

    fn next_wake(&self) -> Option<Millis> {
        self.conversation
            .as_ref()
            .and_then(|c| c.poll_timeout(|e| self.core.can_run(e)))
    }

    /// Starts the claimed jobs, each on its own task; results come back as `Executed`.
    fn start(&self, jobs: Vec<Job>) {
        for job in jobs {
            let Some(executor) = self.core.executors.for_effect(&job.effect).cloned() else {
                continue;
            };
            self.core.executing.insert(job.id.clone(), ());
            self.slot.executing.fetch_add(1, Ordering::Relaxed);
            let core = self.core.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let result = match tokio::time::timeout(
                    core.execute_timeout,
                    executor.execute(&job),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(job.committed.timeout_outcome()),
                };
                let kind = crate::node::effect_label(&job.effect);
                core.stats.count_execution(kind, &result, started.elapsed());
                let found = job.found.take();
                core.deliver_result(job.key, job.id, result, found).await;
            });
        }
    }
}

/// Spawns the actor of `key`, linked to the node's supervisor (the node's [`Core::activate`]).
pub(crate) fn activate(
    core: Arc<Core>,
    key: ContactKey,
    slot: Arc<Slot>,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<ActorRef<ContactMsg>, EngineError>> + Send>,
> {
    Box::pin(spawn(core, key, slot))
}

async fn spawn(
    core: Arc<Core>,
    key: ContactKey,
    slot: Arc<Slot>,
) -> Result<ractor::ActorRef<ContactMsg>, EngineError> {
    let supervisor = core.supervisor.get().expect("supervisor started").clone();
    let args = ContactArgs {
        key,
        core: core.clone(),
        slot: slot.clone(),
    };
    match Actor::spawn_linked(None, ContactActor, args, supervisor).await {
        Ok((actor, _join)) => {
            core.by_actor.insert(actor.get_id(), (key, slot));
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
