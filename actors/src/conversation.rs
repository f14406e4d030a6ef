//! `Conversation`: one contact's conversation as a pure state machine.
//!
//! [`Conversation::handle`] takes an [`Event`] and the current time and returns the [`Effect`]s
//! it caused; it does no I/O and reads no clock, so every rule below is a plain unit or property
//! test away. The contact actor is the shell around it: it persists the snapshot, runs the
//! outbox, arms the timers.
//!
//! The rules that matter most:
//! * While a seller holds the conversation (`human_assigned`) the bot neither receives customer
//!   messages nor speaks: every takeover bumps the **epoch**, every dispatch carries the epoch it
//!   was made in, and a reply from an older epoch or for a superseded dispatch is recorded in the
//!   timeline and dropped.
//! * A customer message id is acted on at most once; the same id again with an attachment is
//!   merged into the message, not added twice.
//! * A burst of customer messages is held for the debounce time and sent as one dispatch
//!   carrying every message since the last delivered reply; a newer message supersedes a
//!   dispatch in flight.
//! * At most one proactive conversation is live per contact.
//! * Timers never fire early: a timer event before its due time changes nothing.
//! * Handing the conversation back to the bot tells n8n (a `released` dispatch), so the AI's
//!   memory of "a human is talking" does not keep it silent.
//!
//! A rejected event ([`Rejection`]) leaves the conversation exactly as it was.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::append_log::AppendLog;
use crate::compact::PushCompact;
use crate::contact::{ContactKey, Millis};
use crate::effect::{Dispatch, DispatchKind, Effect, Outbox, OutboxEntry, TimerKind};
use crate::event::{BotCommand, Event};
use crate::message::{InboundMessage, Links, SellerRef};
use crate::note::Note;
use crate::phase::Phase;
use crate::policy::Policy;
use crate::timeline::{Entry, Timeline, What};

/// How many message ids a conversation remembers for deduplication. Kommo redelivers within
/// hours, far fewer messages than this apart.
const SEEN_CAPACITY: usize = 256;
/// How many recent dispatches are remembered to judge a late reply.
const RECENT_DISPATCHES: usize = 32;
/// How many sent reply texts are remembered to recognise their echoes in the chat.
const RECENT_REPLIES: usize = 20;
/// The most notes that wait in the outbox (Kommo away); older ones are cancelled.
const QUEUED_NOTES: usize = 20;
/// The longest error kept on an outbox entry or in a note, in bytes.
const MAX_ERROR_BYTES: usize = 300;
/// How many dead-lettered effects a conversation keeps for an operator (the oldest go).
const DEAD_KEPT: usize = 10;
/// How many messages reported missed (gap detection) a conversation remembers.
const MISSED_CAPACITY: usize = 20;
/// What [`Conversation::trim`] keeps.
const TRIMMED_PENDING: usize = 10;
const TRIMMED_SEEN: usize = 64;
const TRIMMED_TIMELINE: usize = 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub(crate) key: ContactKey,
    pub(crate) phase: Phase,
    /// Bumped at every change of who may speak (takeover, release, pause, resume).
    pub(crate) epoch: u64,
    #[serde(default)]
    pub(crate) links: Links,
    /// Customer messages since the last delivered reply.
    #[serde(default, skip_serializing_if = "AppendLog::is_empty")]
    pub(crate) pending: AppendLog<InboundMessage>,
    /// The dispatch whose reply the conversation waits for.
    #[serde(default)]
    pub(crate) in_flight: Option<InFlight>,
    /// When the current burst of customer messages began (for the debounce cap).
    #[serde(default)]
    pub(crate) burst_started_at: Option<Millis>,
    #[serde(default)]
    pub(crate) recent_dispatches: VecDeque<DispatchRecord>,
    /// Normalised texts of replies this engine sent, to tell their echoes from a human.
    #[serde(default)]
    pub(crate) recent_replies: VecDeque<String>,
    /// Message ids already acted on, with whether their attachment arrived.
    #[serde(default, skip_serializing_if = "AppendLog::is_empty")]
    pub(crate) seen: AppendLog<SeenMessage>,
    #[serde(default)]
    pub(crate) timers: BTreeMap<TimerKind, Millis>,
    #[serde(default)]
    pub(crate) outbox: Outbox,
    /// Source of every outbox id; never reused.
    pub(crate) next_seq: u64,
    #[serde(default)]
    pub(crate) last_customer_at: Option<Millis>,
    pub(crate) created_at: Millis,
    pub(crate) updated_at: Millis,
    #[serde(default, skip_serializing_if = "Timeline::is_empty")]
    pub(crate) timeline: Timeline,
    /// Who opened the conversation proactively, and about what; kept until it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) proactive: Option<ProactiveOrigin>,
    /// Customer messages Kommo has and conversa never received, until they arrive after all.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub(crate) missed: VecDeque<MissedMessage>,
    /// Effects that failed for good, kept for an operator to replay or drop.
    #[serde(default, skip_serializing_if = "VecDeque::is_empty")]
    pub(crate) dead: VecDeque<DeadEffect>,
}

/// An effect given up on: its retries ran out, or trying again could not help.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadEffect {
    /// Its outbox id (a dispatch's `dispatch_id`).
    pub id: String,
    /// What it was to do. A dispatch is kept without its messages: a replay carries the
    /// messages unanswered then.
    pub effect: Effect,
    pub error: String,
    pub attempts: u32,
    /// When it was queued, and when it was given up on (Unix milliseconds).
    pub created_at: Millis,
    pub at: Millis,
}

/// A customer message Kommo's events list and no webhook brought (gap detection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MissedMessage {
    /// Kommo's message id.
    pub id: String,
    /// When the customer wrote it (Unix milliseconds, Kommo's event time).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub at: Millis,
}

/// The marketing event that opened a conversation, with its seller and practice area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProactiveOrigin {
    pub trigger: String,
    pub seller: SellerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<String>,
    pub at: Millis,
}

/// The n8n dispatch whose answer is awaited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InFlight {
    pub dispatch_id: String,
    pub kind: DispatchKind,
    /// A newer customer message came in: the reply to this dispatch will be dropped.
    pub superseded: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRecord {
    pub dispatch_id: String,
    pub epoch: u64,
    pub kind: DispatchKind,
    /// A reply to it was accepted: the same reply again (n8n retrying) is not news.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answered: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenMessage {
    pub id: String,
    pub attachment: bool,
}

/// Why an n8n reply was not delivered to the customer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    HumanAssigned,
    Paused,
    StaleDispatch,
    Superseded,
    UnknownDispatch,
    /// A reply to this dispatch was already accepted (a retried callback).
    AlreadyAnswered,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::HumanAssigned => "human_assigned",
            DropReason::Paused => "paused",
            DropReason::StaleDispatch => "stale_dispatch",
            DropReason::Superseded => "superseded",
            DropReason::UnknownDispatch => "unknown_dispatch",
            DropReason::AlreadyAnswered => "already_answered",
        }
    }
}

/// An event the conversation refuses; nothing changed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the conversation is held by seller {} ({})", .0.name, .0.id)]
    HeldBy(SellerRef),
    #[error("a seller holds the conversation")]
    HumanAssigned,
    #[error("the bot is paused for this conversation")]
    Paused,
    #[error("a conversation with this contact is already live")]
    AlreadyLive,
    #[error("the conversation is not scheduling")]
    NotScheduling,
    #[error("a reply needs at least one non-empty text")]
    EmptyReply,
    #[error("no dead-lettered effect with this id is kept")]
    NoSuchDeadLetter,
    #[error("the conversation changed hands since: the reply belongs to an earlier conversation")]
    StaleReply,
    #[error("nothing to replay: the customer's messages were answered since")]
    NothingToReplay,
}

/// What one event did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub effects: Vec<Effect>,
    /// For a reply: why it was not delivered.
    pub dropped: Option<DropReason>,
    /// Whether the conversation changed (a redelivered message changes nothing and need not be
    /// written).
    pub changed: bool,
    /// The ids of the outbox entries this event queued (a reply's entry, to follow it).
    pub queued: Vec<String>,
}

impl Conversation {
    pub fn new(key: ContactKey, now: Millis) -> Self {
        Self {
            key,
            phase: Phase::Idle,
            epoch: 0,
            links: Links::default(),
            pending: AppendLog::default(),
            in_flight: None,
            burst_started_at: None,
            recent_dispatches: VecDeque::new(),
            recent_replies: VecDeque::new(),
            seen: AppendLog::default(),
            timers: BTreeMap::new(),
            outbox: Outbox::default(),
            next_seq: 1,
            last_customer_at: None,
            created_at: now,
            updated_at: now,
            timeline: Timeline::default(),
            proactive: None,
            missed: VecDeque::new(),
            dead: VecDeque::new(),
        }
    }

    /// Applies one event at time `now`.
    pub fn handle(
        &mut self,
        event: Event,
        now: Millis,
        policy: &Policy,
    ) -> Result<Outcome, Rejection> {
        self.check(&event, now, policy)?;
        let mut out = Outcome::default();
        let mut step = Step {
            c: self,
            now,
            policy,
            out: &mut out,
        };
        step.apply(event);
        if out.changed {
            self.updated_at = now;
        }
        Ok(out)
    }

    /// Lets the oldest of what the conversation keeps go, because its snapshot outgrew the
    /// store's hard cap of `cap` bytes: unanswered messages down to the newest
    /// [`TRIMMED_PENDING`] that fit in half the cap, message ids remembered for deduplication,
    /// recent dispatches and replies, notes not yet written, and the timeline down to its
    /// newest entries — then one `trimmed` entry says what went. The phase, epoch, timers and
    /// every effect but notes are untouched.
    ///
    /// Every part of a conversation is bounded on its own, so only an unforeseen mix of
    /// large parts gets here; the actor calls it when a snapshot is larger than the cap.
    pub fn trim(&mut self, now: Millis, cap: usize) {
        let mut kept = 0usize;
        let mut bytes = 0usize;
        for m in self.pending.iter().rev() {
            if kept == TRIMMED_PENDING || (kept > 0 && bytes + m.weight() > cap / 2) {
                break;
            }
            kept += 1;
            bytes += m.weight();
        }
        let messages = self.pending.len() - kept;
        self.pending.drop_front(messages);
        let seen = self.seen.len().saturating_sub(TRIMMED_SEEN);
        self.seen.drop_front(seen);
        let dispatches = self
            .recent_dispatches
            .len()
            .saturating_sub(TRIMMED_SEEN / 8);
        self.recent_dispatches.drain(..dispatches);
        self.recent_replies.clear();
        let notes = self
            .outbox
            .remove_where(|e| e.claim.is_none() && matches!(e.effect, Effect::AddNote { .. }))
            .len();
        self.timeline.keep_newest(TRIMMED_TIMELINE);
        self.timeline.push(Entry {
            at: now,
            what: What::Trimmed,
            message_id: None,
            dispatch_id: None,
            detail: Some(format!(
                "snapshot over its size cap: let go of {messages} unanswered messages, {seen} remembered message ids, {dispatches} dispatch records, {notes} unwritten notes, older timeline entries"
            )),
        });
        self.updated_at = now;
    }

    /// Every rejection is decided here, before anything is touched.
    fn check(&self, event: &Event, now: Millis, policy: &Policy) -> Result<(), Rejection> {
        match (event, &self.phase) {
            (Event::Assume { seller, .. }, Phase::HumanAssigned { seller: holder, .. })
                if holder.id != seller.id =>
            {
                Err(Rejection::HeldBy(holder.clone()))
            }
            (
                Event::Release {
                    seller: Some(seller),
                    ..
                },
                Phase::HumanAssigned { seller: holder, .. },
            ) if holder.id != seller.id => Err(Rejection::HeldBy(holder.clone())),
            (Event::Reply { texts, .. }, _) if texts.iter().all(|t| t.trim().is_empty()) => {
                Err(Rejection::EmptyReply)
            }
            (Event::ProactiveStart { .. } | Event::SchedulingRequest { .. }, phase) => {
                match phase {
                    Phase::HumanAssigned { .. } => Err(Rejection::HumanAssigned),
                    Phase::Paused { .. } => Err(Rejection::Paused),
                    Phase::Scheduling { .. } => Err(Rejection::AlreadyLive),
                    Phase::Proactive { .. } | Phase::BotActive
                        if matches!(event, Event::ProactiveStart { .. })
                            && self.is_live_at(now, policy) =>
                    {
                        Err(Rejection::AlreadyLive)
                    }
                    _ => Ok(()),
                }
            }
            (Event::SchedulingOutcome { .. }, phase)
                if !matches!(phase, Phase::Scheduling { .. }) =>
            {
                Err(Rejection::NotScheduling)
            }
            (Event::Replay { id, .. }, _) => self.check_replay(id),
            (Event::DropDeadLetter { id, .. }, _) if !self.dead.iter().any(|d| d.id == *id) => {
                Err(Rejection::NoSuchDeadLetter)
            }
            _ => Ok(()),
        }
    }

    /// A replay is fenced like the effect was: nothing the bot says goes into a conversation a
    /// seller holds or that is paused, a reply from before a change of hands stays unsent, and
    /// a message dispatch needs messages still unanswered.
    fn check_replay(&self, id: &str) -> Result<(), Rejection> {
        let dead = self
            .dead
            .iter()
            .find(|d| d.id == id)
            .ok_or(Rejection::NoSuchDeadLetter)?;
        let bot_speaks = !matches!(dead.effect, Effect::AddNote { .. });
        match &self.phase {
            Phase::HumanAssigned { seller, .. } if bot_speaks => {
                return Err(Rejection::HeldBy(seller.clone()));
            }
            Phase::Paused { .. } if bot_speaks => return Err(Rejection::Paused),
            _ => {}
        }
        match &dead.effect {
            Effect::Dispatch(d) => match d.kind {
                DispatchKind::Message if self.pending.is_empty() => Err(Rejection::NothingToReplay),
                DispatchKind::Scheduling if !matches!(self.phase, Phase::Scheduling { .. }) => {
                    Err(Rejection::NotScheduling)
                }
                // Every message it asked about arrived since (or was let go).
                DispatchKind::Missed if self.missed.is_empty() => Err(Rejection::NothingToReplay),
                // At most one proactive opening waits: another one is on its way.
                DispatchKind::Proactive
                    if self.outbox.entries().any(|e| {
                        matches!(&e.effect, Effect::Dispatch(x) if x.kind == DispatchKind::Proactive)
                    }) =>
                {
                    Err(Rejection::AlreadyLive)
                }
                _ => Ok(()),
            },
            Effect::DeliverReply {
                dispatch_id: Some(dispatch_id),
                ..
            } => {
                let epoch = self
                    .recent_dispatches
                    .iter()
                    .find(|r| r.dispatch_id == *dispatch_id)
                    .map(|r| r.epoch);
                match epoch {
                    Some(e) if e == self.epoch => Ok(()),
                    _ => Err(Rejection::StaleReply),
                }
            }
            Effect::DeliverReply {
                dispatch_id: None, ..
            } => Err(Rejection::StaleReply),
            Effect::AddNote { .. } => Ok(()),
        }
    }

    /// Whether a conversation is going on at `now`, so a proactive start would be a duplicate:
    /// a bot conversation is live while a dispatch awaits its reply, the customer wrote
    /// within the policy's live window, or a proactive opening is still in the outbox.
    pub fn is_live_at(&self, now: Millis, policy: &Policy) -> bool {
        let opening_unsent = || {
            self.outbox.entries().any(
                |e| matches!(&e.effect, Effect::Dispatch(d) if d.kind == DispatchKind::Proactive),
            )
        };
        match self.phase {
            Phase::Scheduling { .. } | Phase::HumanAssigned { .. } => true,
            // An opening the customer never answered stops counting after the live window.
            Phase::Proactive { since, .. } => {
                now.saturating_sub(since) < policy.live_window_ms || opening_unsent()
            }
            Phase::BotActive => {
                self.in_flight.is_some()
                    || self
                        .last_customer_at
                        .is_some_and(|t| now.saturating_sub(t) < policy.live_window_ms)
                    || opening_unsent()
            }
            Phase::Idle | Phase::Paused { .. } => false,
        }
    }

    /// When the actor must next run: the earliest timer or outbox retry / claim expiry.
    pub fn next_wake(&self) -> Option<Millis> {
        self.poll_timeout(|_| true)
    }

    /// When the driver must next call [`Conversation::handle_timeout`] or
    /// [`Conversation::poll_work`]: the earliest timer, or the earliest retry or claim expiry of
    /// an outbox entry the driver can run (`can_run`; the others wait for an executor to be
    /// configured and must not wake the driver in a loop).
    pub fn poll_timeout(&self, can_run: impl Fn(&Effect) -> bool) -> Option<Millis> {
        let timer = self.timers.values().copied().min();
        let outbox = self.outbox.next_wake_where(|e| can_run(&e.effect));
        match (timer, outbox) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Everything that comes due by `now`: effects that waited too long expire
    /// ([`Conversation::expire_effects`]), then the due timers fire, earliest first. A timer
    /// that is not due changes nothing, so a driver woken early does no harm.
    pub fn handle_timeout(&mut self, now: Millis, policy: &Policy) -> Outcome {
        let mut out = self.expire_effects(now, policy);
        for timer in self.due_timers(now) {
            if let Ok(o) = self.handle(Event::TimerFired { timer }, now, policy) {
                out.effects.extend(o.effects);
                out.queued.extend(o.queued);
                out.changed |= o.changed;
            }
        }
        out
    }

    /// Whether an outbox entry the driver can run is due at `now` (to try, or to take over
    /// after its claim expired).
    pub fn has_due_work(&self, now: Millis, can_run: impl Fn(&Effect) -> bool) -> bool {
        self.outbox
            .entries()
            .any(|e| can_run(&e.effect) && e.wake_at() <= now)
    }

    /// Claims, for `node` until `lease_until`, the due outbox entries the driver can run and
    /// returns their ids: the driver writes the claims with the snapshot, then runs them and
    /// reports each with `EffectDone` / `EffectFailed`. A contact's dispatches go one at a time.
    pub fn poll_work(
        &mut self,
        node: &str,
        now: Millis,
        lease_until: Millis,
        can_run: impl Fn(&Effect) -> bool,
    ) -> Vec<String> {
        self.outbox
            .claim_due_where(node, now, lease_until, |e| can_run(&e.effect))
    }

    /// Drops the dispatches and replies that waited in the outbox longer than
    /// `policy.max_effect_age_ms` (an n8n or Kommo that was down or not configured): answering a
    /// customer hours late is worse than not answering. Each is recorded in the timeline and
    /// reported on the lead. Entries being executed (a live claim) are left alone.
    pub fn expire_effects(&mut self, now: Millis, policy: &Policy) -> Outcome {
        let mut out = Outcome::default();
        let Some(max_age) = policy.max_effect_age_ms else {
            return out;
        };
        let expired = self.outbox.remove_where(|e| {
            let executing = e.claim.as_ref().is_some_and(|c| c.until > now);
            let late = now.saturating_sub(e.created_at) >= max_age;
            late && !executing
                && matches!(e.effect, Effect::Dispatch(_) | Effect::DeliverReply { .. })
        });
        if expired.is_empty() {
            return out;
        }
        let mut step = Step {
            c: self,
            now,
            policy,
            out: &mut out,
        };
        for entry in expired {
            step.expired(entry);
        }
        self.updated_at = now;
        out
    }

    /// Timers due at `now`, earliest first.
    pub fn due_timers(&self, now: Millis) -> Vec<TimerKind> {
        let mut due: Vec<_> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, at)| (*at, *k))
            .collect();
        due.sort();
        due.into_iter().map(|(_, k)| k).collect()
    }

    // ---- reading the conversation (its fields are the machine's own) ----

    pub fn key(&self) -> ContactKey {
        self.key
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Bumped at every change of who may speak (takeover, release, pause, resume).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Customer messages since the last delivered reply.
    pub fn pending(&self) -> &VecDeque<InboundMessage> {
        self.pending.items()
    }

    /// The dispatch whose reply the conversation waits for.
    pub fn in_flight(&self) -> Option<&InFlight> {
        self.in_flight.as_ref()
    }

    /// When the current burst of customer messages began (for the debounce cap).
    pub fn burst_started_at(&self) -> Option<Millis> {
        self.burst_started_at
    }

    /// The armed timers and when they fire.
    pub fn timers(&self) -> &BTreeMap<TimerKind, Millis> {
        &self.timers
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn created_at(&self) -> Millis {
        self.created_at
    }

    pub fn updated_at(&self) -> Millis {
        self.updated_at
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// Who opened the conversation proactively, and about what.
    pub fn proactive(&self) -> Option<&ProactiveOrigin> {
        self.proactive.as_ref()
    }

    /// Effects that failed for good, oldest first, for an operator to replay or drop.
    pub fn dead_letters(&self) -> &VecDeque<DeadEffect> {
        &self.dead
    }

    /// Customer messages reported missed that have not arrived since.
    pub fn missed(&self) -> &VecDeque<MissedMessage> {
        &self.missed
    }

    /// An executor on `node` takes the outbox entry `id` until `until`, as [`Conversation::poll_work`]
    /// does for each due entry it hands out; `false` when there is no such entry.
    pub fn claim(&mut self, id: &str, node: &str, until: Millis) -> bool {
        match self.outbox.get_mut(id) {
            Some(entry) => {
                entry.claim = Some(crate::effect::Claim {
                    node: node.to_owned(),
                    until,
                });
                true
            }
            None => false,
        }
    }

    pub fn last_customer_at(&self) -> Option<Millis> {
        self.last_customer_at
    }

    /// The recent dispatches, to judge a late reply.
    pub fn recent_dispatches(&self) -> &VecDeque<DispatchRecord> {
        &self.recent_dispatches
    }

    /// Message ids already acted on, with whether their attachment arrived.
    pub fn seen(&self) -> &VecDeque<SeenMessage> {
        self.seen.items()
    }

    pub fn seller(&self) -> Option<&SellerRef> {
        self.phase.seller()
    }

    /// The seller holding the conversation, else the one who opened it proactively.
    pub fn held_or_opened_by(&self) -> Option<&SellerRef> {
        self.phase
            .seller()
            .or(self.proactive.as_ref().map(|o| &o.seller))
    }
}

/// One event being applied: the conversation, the time, the policy and what came out.
struct Step<'a> {
    c: &'a mut Conversation,
    now: Millis,
    policy: &'a Policy,
    out: &'a mut Outcome,
}

impl Step<'_> {
    fn apply(&mut self, event: Event) {
        match event {
            Event::CustomerMessage(msg) => self.customer_message(msg),
            Event::SellerSpoke { seller, message_id } => self.seller_spoke(seller, message_id),
            Event::OutgoingMessage {
                message_id,
                text,
                author,
            } => self.outgoing(message_id, text, author),
            Event::MessagesMissed { messages } => self.messages_missed(messages),
            Event::LinksSeen(links) => {
                let mut updated = self.c.links.clone();
                updated.update(&links);
                if updated != self.c.links {
                    self.c.links = updated;
                    self.out.changed = true;
                }
            }
            Event::BotControl { command, by } => match command {
                BotCommand::Pause => self.pause(by),
                BotCommand::Resume => self.resume(by),
            },
            Event::Assume { seller, by } => self.assume(seller, by),
            Event::Release { by, .. } => {
                if self.c.phase.is_human() {
                    self.back_to_bot(What::Released, by);
                }
            }
            Event::Reply { dispatch_id, texts } => self.reply(dispatch_id, texts),
            Event::ProactiveStart {
                trigger,
                seller,
                area,
                details,
            } => self.proactive(trigger, seller, area, details),
            Event::SchedulingRequest { seller, request } => self.scheduling(seller, request),
            Event::SchedulingOutcome {
                dispatch_id,
                confirmed,
                details,
            } => self.scheduling_outcome(dispatch_id, confirmed, details),
            Event::TimerFired { timer } => self.timer(timer),
            Event::EffectDone { id } => self.effect_done(id),
            Event::EffectFailed {
                id,
                error,
                retryable,
            } => self.effect_failed(id, error, retryable),
            Event::Replay { id, by } => self.replay(id, by),
            Event::DropDeadLetter { id, by } => {
                self.c.dead.retain(|d| d.id != id);
                self.out.changed = true;
                self.log(What::DeadLetterDropped, None, Some(&id), Some(&by));
            }
        }
    }

    // ---- customer messages and the reply cycle ------------------------------------------

    fn customer_message(&mut self, mut msg: InboundMessage) {
        let cut_from = msg.bound(self.policy.max_message_bytes);
        if let Some(at) = self.c.seen.iter().position(|s| s.id == msg.id) {
            // A redelivery. Only an attachment that was missing makes it news.
            if self.c.seen[at].attachment || msg.attachment.is_none() {
                return;
            }
            self.c.seen.edit()[at].attachment = true;
            let in_buffer = match self.c.pending.iter().position(|m| m.id == msg.id) {
                Some(i) => Some(&mut self.c.pending.edit()[i]),
                None => None,
            };
            let merged = match in_buffer {
                Some(existing) => {
                    existing.attachment = msg.attachment;
                    if !msg.text.is_empty() {
                        existing.text = msg.text;
                    }
                    true
                }
                None => false,
            };
            let detail = if merged {
                "merged into the pending message"
            } else {
                "arrived after the message was answered or held"
            };
            self.log(What::AttachmentMerged, Some(&msg.id), None, Some(detail));
            self.bound_pending();
            if merged && self.bot_may_speak() {
                self.burst();
            }
            return;
        }
        if self.c.seen.len() == SEEN_CAPACITY {
            self.c.seen.pop_front();
        }
        self.c.seen.push(SeenMessage {
            id: msg.id.clone(),
            attachment: msg.attachment.is_some(),
        });
        self.c.links.update(&msg.links);
        self.c.last_customer_at = Some(self.now);
        self.touch();
        if let Some(i) = self.c.missed.iter().position(|m| m.id == msg.id) {
            self.c.missed.remove(i);
            self.log(What::MissedArrived, Some(&msg.id), None, None);
        }
        if let Some(bytes) = cut_from {
            let detail = format!("text of {bytes} bytes cut to {}", msg.text.len());
            self.log(What::MessageTruncated, Some(&msg.id), None, Some(&detail));
        }
        match self.c.phase {
            Phase::HumanAssigned { .. } | Phase::Paused { .. } => {
                // Kept for the bot, should the conversation come back to it unanswered.
                let phase = self.c.phase.name();
                self.log(What::MessageHeld, Some(&msg.id), None, Some(phase));
                self.keep_pending(msg);
            }
            Phase::Scheduling { .. } => {
                let phase = self.c.phase.name();
                self.log(What::MessageHeld, Some(&msg.id), None, Some(phase));
            }
            Phase::Idle | Phase::Proactive { .. } | Phase::BotActive => {
                self.c.phase = Phase::BotActive;
                self.log(What::MessageIn, Some(&msg.id), None, None);
                self.keep_pending(msg);
                self.burst();
            }
        }
    }

    /// Kommo's events list customer messages whose webhook never came (one event per contact
    /// and look). Each is recorded once (an id already acted on or already reported changes
    /// nothing), the seller is told on the lead in one note, and while the bot is in charge
    /// n8n gets a `missed` dispatch naming every message still missing (with the unanswered
    /// ones), so the AI can ask the customer to write them again. One such dispatch not sent
    /// yet is brought up to date instead of sending another. Should a message arrive after all,
    /// it is applied like any other ([`Step::customer_message`]) and its entry closed.
    fn messages_missed(&mut self, messages: Vec<MissedMessage>) {
        let mut new: Vec<MissedMessage> = Vec::new();
        for m in messages {
            let known = self.c.seen.iter().any(|s| s.id == m.id)
                || self.c.missed.iter().any(|x| x.id == m.id)
                || new.iter().any(|x| x.id == m.id);
            if !known {
                new.push(m);
            }
        }
        let Some(first_at) = new.iter().map(|m| m.at).min() else {
            return;
        };
        self.out.changed = true;
        let count = new.len();
        for m in new {
            self.log(What::MessageMissed, Some(&m.id), None, None);
            if self.c.missed.len() == MISSED_CAPACITY {
                self.c.missed.pop_front();
            }
            self.c.missed.push_back(m);
        }
        self.note(Note::MessagesMissed {
            at: first_at,
            count,
        });
        if !matches!(
            self.c.phase,
            Phase::Idle | Phase::Proactive { .. } | Phase::BotActive
        ) {
            return; // a seller, a pause or a scheduling dialogue has the word
        }
        self.c.phase = Phase::BotActive;
        self.touch();
        let open = self.open_missed();
        let waiting = self
            .c
            .outbox
            .entries()
            .find(|e| {
                e.claim.is_none()
                    && matches!(&e.effect, Effect::Dispatch(d) if d.kind == DispatchKind::Missed)
            })
            .map(|e| e.id.clone());
        if let Some(id) = waiting
            && let Some(Effect::Dispatch(d)) = self.c.outbox.get_mut(&id).map(|e| &mut e.effect)
        {
            d.details = open;
            d.messages = self.c.pending.to_vec();
            return;
        }
        // The AI would answer without the missing messages: ask with them instead.
        self.supersede_in_flight();
        self.cancel_timer(TimerKind::Debounce);
        self.c.burst_started_at = None;
        let seller = self.c.proactive.as_ref().map(|o| o.seller.clone());
        let messages = self.c.pending.to_vec();
        self.dispatch(DispatchKind::Missed, messages, seller, open);
    }

    /// `{"missed": [{message_id, at}]}` of every message still missing, for a dispatch.
    fn open_missed(&self) -> serde_json::Value {
        let list: Vec<serde_json::Value> = self
            .c
            .missed
            .iter()
            .map(|m| serde_json::json!({ "message_id": m.id, "at": m.at }))
            .collect();
        serde_json::json!({ "missed": list })
    }

    /// Adds a message to the unanswered ones, dropping the oldest beyond the policy's bounds
    /// (a count and a total size: a dispatch carries them all).
    fn keep_pending(&mut self, msg: InboundMessage) {
        self.c.pending.push(msg);
        self.bound_pending();
    }

    /// Drops the oldest unanswered messages while there are more than the policy allows, in
    /// count or in bytes; the newest always stays.
    fn bound_pending(&mut self) {
        let max = self.policy.max_pending_messages.max(1);
        let max_bytes = self.policy.max_pending_bytes;
        let mut bytes: usize = self.c.pending.iter().map(InboundMessage::weight).sum();
        while self.c.pending.len() > 1 && (self.c.pending.len() > max || bytes > max_bytes) {
            let why = if self.c.pending.len() > max {
                "too many unanswered messages"
            } else {
                "unanswered messages too long"
            };
            let dropped = self.c.pending.pop_front().expect("more than one pending");
            bytes -= dropped.weight();
            self.log(What::MessageDropped, Some(&dropped.id), None, Some(why));
        }
    }

    /// Something happened: the conversation's idle end moves away.
    /// Like every timer it is persisted in `timers` (the actor's wake-up follows it), but it
    /// is housekeeping, not a decision.
    ///
    /// The end is rounded up to a tenth of the idle time (at most 5 minutes): a burst of
    /// messages leaves it, and so the store's wake index, unchanged, and it is never early.
    fn touch(&mut self) {
        if let Some(idle) = self.policy.conversation_idle_ms {
            let grain = (idle / 10).clamp(1, 300_000);
            let at = (self.now + idle).div_ceil(grain) * grain;
            self.c.timers.insert(TimerKind::IdleEnd, at);
            self.out.changed = true;
        }
    }

    fn bot_may_speak(&self) -> bool {
        matches!(self.c.phase, Phase::BotActive)
    }

    /// A newer dispatch will carry more: the reply to the one in flight is to be dropped. Not
    /// sent yet, it need not be sent at all; a `released` dispatch still goes (n8n must learn
    /// that the bot is back).
    fn supersede_in_flight(&mut self) {
        if let Some(f) = self.c.in_flight.as_mut().filter(|f| !f.superseded) {
            f.superseded = true;
            let id = f.dispatch_id.clone();
            let released = f.kind == DispatchKind::Released;
            self.log(What::DispatchSuperseded, None, Some(&id), None);
            if !released {
                self.cancel_outbox(|e| e.id == id && e.claim.is_none());
            }
        }
    }

    /// A customer message joined the burst: supersede what is in flight, then dispatch now or
    /// when the customer stops typing.
    fn burst(&mut self) {
        self.supersede_in_flight();
        if self.policy.debounce_ms == 0 {
            self.flush();
            return;
        }
        let first = *self.c.burst_started_at.get_or_insert(self.now);
        let at = (self.now + self.policy.debounce_ms)
            .min(first + self.policy.debounce_max_ms)
            .max(self.now);
        self.set_timer(TimerKind::Debounce, at);
    }

    /// Sends every message since the last delivered reply to n8n.
    fn flush(&mut self) {
        self.cancel_timer(TimerKind::Debounce);
        self.c.burst_started_at = None;
        let already_sent = self.c.in_flight.as_ref().is_some_and(|f| !f.superseded);
        if self.c.pending.is_empty() || already_sent || !self.bot_may_speak() {
            return;
        }
        let messages = self.c.pending.to_vec();
        // A proactive conversation keeps telling n8n who opened it, and about what.
        let (seller, details) = match &self.c.proactive {
            Some(o) => (
                Some(o.seller.clone()),
                serde_json::json!({ "area_atuacao": o.area, "trigger_type": o.trigger }),
            ),
            None => (None, serde_json::Value::Null),
        };
        self.dispatch(DispatchKind::Message, messages, seller, details);
    }

    fn reply(&mut self, dispatch_id: Option<String>, texts: Vec<String>) {
        self.out.changed = true;
        let verdict = match self.c.phase {
            Phase::HumanAssigned { .. } => Err(DropReason::HumanAssigned),
            Phase::Paused { .. } => Err(DropReason::Paused),
            _ => self.fence(dispatch_id.as_deref()),
        };
        match verdict {
            Err(reason) => {
                self.out.dropped = Some(reason);
                self.log(
                    What::ReplyDropped,
                    None,
                    dispatch_id.as_deref(),
                    Some(reason.as_str()),
                );
            }
            Ok(kind) => {
                // A scheduling dialogue may take several replies; any other reply closes the
                // cycle: the messages it answered are no longer pending.
                if kind != Some(DispatchKind::Scheduling) {
                    self.c.in_flight = None;
                    self.c.pending.clear();
                    if let Some(id) = &dispatch_id
                        && let Some(r) = self
                            .c
                            .recent_dispatches
                            .iter_mut()
                            .find(|r| r.dispatch_id == *id)
                    {
                        r.answered = true;
                    }
                }
                self.log(What::ReplyAccepted, None, dispatch_id.as_deref(), None);
                // A channel may send the parts one by one or joined: remember both forms.
                let joined = (texts.len() > 1).then(|| texts.join("\n\n"));
                for text in texts.iter().chain(joined.iter()) {
                    if self.c.recent_replies.len() == RECENT_REPLIES {
                        self.c.recent_replies.pop_front();
                    }
                    self.c.recent_replies.push_back(echo_key(text));
                }
                self.touch();
                self.queue(
                    Effect::DeliverReply {
                        dispatch_id,
                        texts,
                        sent: 0,
                    },
                    'r',
                );
            }
        }
    }

    /// Judges a reply by its dispatch: `Ok(kind of the awaited dispatch)` to deliver it.
    fn fence(&self, dispatch_id: Option<&str>) -> Result<Option<DispatchKind>, DropReason> {
        let in_flight = self.c.in_flight.as_ref();
        let Some(id) = dispatch_id else {
            // A reply without an id (older n8n flows) answers whatever is in flight. With
            // nothing in flight it answers nothing we can place: it may come from before a
            // takeover (an older epoch) and must not clear messages n8n has not seen.
            // Nor may it answer a `released` dispatch: a reply without an id could be one
            // written before the takeover.
            return match in_flight {
                Some(f) if f.superseded => Err(DropReason::Superseded),
                Some(f) if f.kind == DispatchKind::Released => Err(DropReason::UnknownDispatch),
                Some(f) => Ok(Some(f.kind)),
                None => Err(DropReason::UnknownDispatch),
            };
        };
        let record = self
            .c
            .recent_dispatches
            .iter()
            .find(|d| d.dispatch_id == id)
            .ok_or(DropReason::UnknownDispatch)?;
        if record.epoch < self.c.epoch {
            return Err(DropReason::StaleDispatch);
        }
        if record.answered && record.kind != DispatchKind::Scheduling {
            return Err(DropReason::AlreadyAnswered);
        }
        match in_flight {
            Some(f) if f.dispatch_id == id && !f.superseded => Ok(Some(f.kind)),
            _ => Err(DropReason::Superseded),
        }
    }

    // ---- who may speak ------------------------------------------------------------------

    fn assume(&mut self, seller: SellerRef, by: String) {
        if self.c.phase.is_human() {
            // The holder again: a renewed lease.
            self.extend_lease(None);
            return;
        }
        self.c.epoch += 1;
        self.silence_bot();
        let expires_at = self.policy.human_lease_ms.map(|l| self.now + l);
        let detail = format!("{} ({}) by {by}", seller.name, seller.id);
        let note = Note::TakenOver {
            seller: seller.clone(),
            by: by.clone(),
        };
        self.c.phase = Phase::HumanAssigned {
            seller,
            since: self.now,
            by,
            expires_at,
        };
        self.arm_lease_timers(expires_at);
        self.log(What::Takeover, None, None, Some(&detail));
        self.note(note);
    }

    fn seller_spoke(&mut self, seller: SellerRef, message_id: String) {
        if self.c.seen.iter().any(|s| s.id == message_id) {
            return;
        }
        if self.c.seen.len() == SEEN_CAPACITY {
            self.c.seen.pop_front();
        }
        self.c.seen.push(SeenMessage {
            id: message_id.clone(),
            attachment: false,
        });
        self.out.changed = true;
        if self.c.phase.is_human() {
            // The seller answered what the customer said so far.
            self.c.pending.clear();
            self.extend_lease(Some(&message_id));
        } else if self.policy.auto_takeover_on_human_reply {
            let by = format!("chat message {message_id}");
            self.assume(seller, by);
            // The message that takes over answers what the customer said so far.
            self.c.pending.clear();
        }
    }

    /// An outgoing chat message: our own reply coming back, or a human speaking.
    fn outgoing(&mut self, message_id: String, text: String, author: SellerRef) {
        if self.c.seen.iter().any(|s| s.id == message_id) {
            return;
        }
        let key = echo_key(&text);
        let echo = self
            .c
            .recent_replies
            .iter()
            .position(|r| !key.is_empty() && *r == key);
        if let Some(i) = echo {
            self.c.recent_replies.remove(i);
            if self.c.seen.len() == SEEN_CAPACITY {
                self.c.seen.pop_front();
            }
            self.c.seen.push(SeenMessage {
                id: message_id.clone(),
                attachment: false,
            });
            self.log(What::EchoSeen, Some(&message_id), None, None);
            return;
        }
        self.seller_spoke(author, message_id);
    }

    fn extend_lease(&mut self, message_id: Option<&str>) {
        let expires = self.policy.human_lease_ms.map(|l| self.now + l);
        if let Phase::HumanAssigned { expires_at, .. } = &mut self.c.phase {
            *expires_at = expires;
        }
        self.arm_lease_timers(expires);
        self.log(What::LeaseExtended, message_id, None, None);
    }

    fn arm_lease_timers(&mut self, expires_at: Option<Millis>) {
        match expires_at {
            Some(at) => {
                self.set_timer(TimerKind::LeaseExpiry, at);
                let nudge = self.policy.lease_nudge_ms;
                if nudge > 0 && at.saturating_sub(nudge) > self.now {
                    self.set_timer(TimerKind::LeaseNudge, at - nudge);
                } else {
                    self.cancel_timer(TimerKind::LeaseNudge);
                }
            }
            None => {
                self.cancel_timer(TimerKind::LeaseExpiry);
                self.cancel_timer(TimerKind::LeaseNudge);
            }
        }
    }

    fn pause(&mut self, by: String) {
        if matches!(
            self.c.phase,
            Phase::HumanAssigned { .. } | Phase::Paused { .. }
        ) {
            return;
        }
        self.c.epoch += 1;
        self.silence_bot();
        self.c.phase = Phase::Paused {
            since: self.now,
            by: by.clone(),
        };
        self.log(What::Paused, None, None, Some(&by));
    }

    fn resume(&mut self, by: String) {
        match self.c.phase {
            Phase::Paused { .. } => self.back_to_bot(What::Resumed, by),
            Phase::HumanAssigned { .. } => self.back_to_bot(What::Released, by),
            _ => {}
        }
    }

    /// The bot must not speak: nothing in flight, nothing waiting to be sent. The customer's
    /// unanswered messages stay (nothing dispatches them while the bot is silent): a seller's
    /// message answers them, else the `released` dispatch hands them back.
    fn silence_bot(&mut self) {
        self.c.in_flight = None;
        self.c.burst_started_at = None;
        self.cancel_timer(TimerKind::Debounce);
        self.cancel_timer(TimerKind::SchedulingTimeout);
        self.cancel_outbox(|e| match &e.effect {
            Effect::DeliverReply { .. } => true,
            // A proactive opening not sent yet would have the bot speak over the seller.
            Effect::Dispatch(d) => matches!(
                d.kind,
                DispatchKind::Message
                    | DispatchKind::Scheduling
                    | DispatchKind::Proactive
                    | DispatchKind::Missed
            ),
            _ => false,
        });
    }

    /// Hands the conversation (back) to the bot and tells n8n.
    ///
    /// The `released` dispatch carries the customer's messages nobody answered during the hold
    /// (those after the seller's last message) and a short account of the hold, so the AI can
    /// answer them; a reply to it is then delivered like any other.
    fn back_to_bot(&mut self, what: What, by: String) {
        let previous = self.c.phase.seller().cloned();
        let (held_since, held_by) = match &self.c.phase {
            Phase::HumanAssigned { since, by, .. } | Phase::Paused { since, by } => {
                (Some(*since), Some(by.clone()))
            }
            _ => (None, None),
        };
        let from = self.c.phase.name();
        self.c.epoch += 1;
        self.c.phase = Phase::BotActive;
        self.c.in_flight = None;
        self.cancel_timer(TimerKind::LeaseExpiry);
        self.cancel_timer(TimerKind::LeaseNudge);
        self.log(what, None, None, Some(&by));
        // Still pending until a reply answers them (a newer message re-dispatches them all).
        let unanswered = self.c.pending.to_vec();
        let details = serde_json::json!({
            "reason": what,
            "by": by,
            "hold": {
                "phase": from,
                "since": held_since,
                "by": held_by,
                "seller": previous.as_ref().map(|s| &s.name),
                "unanswered": unanswered.len(),
            },
        });
        self.touch();
        self.dispatch(DispatchKind::Released, unanswered, previous, details);
        self.note(Note::BotBack {
            lease_expired: what == What::LeaseExpired,
        });
    }

    // ---- proactive and scheduling ----------------------------------------------------------

    fn proactive(
        &mut self,
        trigger: String,
        seller: SellerRef,
        area: Option<String>,
        details: serde_json::Value,
    ) {
        self.c.proactive = Some(ProactiveOrigin {
            trigger: trigger.clone(),
            seller: seller.clone(),
            area,
            at: self.now,
        });
        self.touch();
        self.c.pending.clear();
        self.c.burst_started_at = None;
        self.cancel_timer(TimerKind::Debounce);
        self.c.phase = Phase::Proactive {
            since: self.now,
            trigger: trigger.clone(),
        };
        let note = Note::ProactiveStarted {
            trigger: trigger.clone(),
            seller: seller.clone(),
        };
        self.log(What::ProactiveStarted, None, None, Some(&trigger));
        self.dispatch(DispatchKind::Proactive, Vec::new(), Some(seller), details);
        self.note(note);
    }

    fn scheduling(&mut self, seller: Option<SellerRef>, mut request: serde_json::Value) {
        // A proactive conversation knows its seller and area even when the request does not.
        let origin = self.c.proactive.clone();
        let seller = seller.or_else(|| origin.as_ref().map(|o| o.seller.clone()));
        if let (Some(o), serde_json::Value::Object(map)) = (&origin, &mut request) {
            let missing = |v: Option<&serde_json::Value>| v.is_none_or(serde_json::Value::is_null);
            if missing(map.get("area_atuacao"))
                && let Some(area) = &o.area
            {
                map.insert("area_atuacao".into(), area.clone().into());
            }
            if missing(map.get("seller"))
                && let Some(s) = &seller
            {
                map.insert(
                    "seller".into(),
                    serde_json::json!({ "id": s.id, "name": s.name }),
                );
            }
            map.insert("trigger_type".into(), o.trigger.clone().into());
        }
        self.touch();
        // The customer's unanswered messages go to the scheduling dispatch instead of a
        // message dispatch of their own.
        let messages = self.c.pending.take();
        self.c.burst_started_at = None;
        self.cancel_timer(TimerKind::Debounce);
        self.cancel_outbox(|e| {
            e.claim.is_none()
                && matches!(&e.effect, Effect::Dispatch(d) if d.kind == DispatchKind::Message)
        });
        self.c.phase = Phase::Scheduling {
            since: self.now,
            request: request.clone(),
        };
        self.log(What::SchedulingStarted, None, None, None);
        self.dispatch(DispatchKind::Scheduling, messages, seller, request);
        let at = self.now + self.policy.scheduling_timeout_ms;
        self.set_timer(TimerKind::SchedulingTimeout, at);
    }

    fn scheduling_outcome(
        &mut self,
        dispatch_id: Option<String>,
        confirmed: bool,
        details: serde_json::Value,
    ) {
        self.out.changed = true;
        let current = self.c.in_flight.as_ref().map(|f| f.dispatch_id.clone());
        if let (Some(id), Some(cur)) = (&dispatch_id, &current)
            && id != cur
        {
            self.out.dropped = Some(DropReason::StaleDispatch);
            self.log(What::ReplyDropped, None, Some(id), Some("stale_dispatch"));
            return;
        }
        self.c.phase = Phase::BotActive;
        self.c.in_flight = None;
        self.cancel_timer(TimerKind::SchedulingTimeout);
        let status = if confirmed { "confirmed" } else { "failed" };
        self.log(
            What::SchedulingDone,
            None,
            dispatch_id.as_deref(),
            Some(status),
        );
        self.note(Note::SchedulingSettled { confirmed, details });
    }

    // ---- timers and effects -----------------------------------------------------------------

    fn timer(&mut self, timer: TimerKind) {
        match self.c.timers.get(&timer) {
            Some(at) if *at <= self.now => {}
            _ => return, // not set, or not due: never early
        }
        self.c.timers.remove(&timer);
        self.out.changed = true;
        match (timer, &self.c.phase) {
            (TimerKind::Debounce, _) => self.flush(),
            (TimerKind::LeaseNudge, Phase::HumanAssigned { expires_at, .. }) => {
                // Rounded up: a nudge never says "0 minutes".
                let minutes = expires_at.map_or(0, |e| e.saturating_sub(self.now).div_ceil(60_000));
                self.note(Note::LeaseEnding { minutes });
            }
            (
                TimerKind::LeaseExpiry,
                Phase::HumanAssigned {
                    expires_at: Some(e),
                    ..
                },
            ) if *e <= self.now => self.back_to_bot(What::LeaseExpired, "lease".to_owned()),
            (TimerKind::IdleEnd, _) => self.idle_end(),
            (TimerKind::SchedulingTimeout, Phase::Scheduling { .. }) => {
                self.c.phase = Phase::BotActive;
                self.c.in_flight = None;
                self.log(What::SchedulingTimeout, None, None, None);
                self.note(Note::SchedulingTimedOut);
            }
            _ => {}
        }
    }

    fn effect_done(&mut self, id: String) {
        let next_part_at = self.now + self.policy.reply_part_delay_ms;
        if let Some(entry) = self.c.outbox.get_mut(&id)
            && let Effect::DeliverReply { texts, sent, .. } = &mut entry.effect
            && *sent + 1 < texts.len()
        {
            // One part out; the next after the pause, under the same id.
            *sent += 1;
            let detail = format!("part {} of {}", *sent, texts.len());
            entry.claim = None;
            entry.attempts = 0;
            entry.last_error = None;
            entry.not_before = next_part_at;
            self.log(What::PartSent, None, Some(&id), Some(&detail));
            return;
        }
        let Some(entry) = self.c.outbox.remove(&id) else {
            return; // cancelled meanwhile, or a duplicate report
        };
        self.out.changed = true;
        let what = match entry.effect {
            Effect::Dispatch(_) => What::DispatchSent,
            Effect::DeliverReply { .. } => What::ReplySent,
            _ => What::NoteAdded,
        };
        self.log(what, None, Some(&id), None);
    }

    fn effect_failed(&mut self, id: String, mut error: String, retryable: bool) {
        crate::message::cut(&mut error, MAX_ERROR_BYTES);
        let now = self.now;
        let dead_after = self.policy.dead_letter_after_ms;
        let Some(entry) = self.c.outbox.get_mut(&id) else {
            return;
        };
        self.out.changed = true;
        entry.attempts += 1;
        entry.claim = None;
        entry.last_error = Some(error.clone());
        if retryable && now.saturating_sub(entry.created_at) < dead_after {
            entry.not_before = now + self.policy.retry_delay(entry.attempts);
            let detail = format!("attempt {}: {error}", entry.attempts);
            self.log(What::DispatchRetry, None, Some(&id), Some(&detail));
            return;
        }
        let entry = self.c.outbox.remove(&id).expect("entry found above");
        if self
            .c
            .in_flight
            .as_ref()
            .is_some_and(|f| f.dispatch_id == id)
        {
            self.c.in_flight = None;
        }
        self.log(What::DeadLettered, None, Some(&id), Some(&error));
        let mut kept = entry.effect.clone();
        if let Effect::Dispatch(d) = &mut kept {
            d.messages.clear();
        }
        if self.c.dead.len() == DEAD_KEPT {
            self.c.dead.pop_front();
        }
        self.c.dead.push_back(DeadEffect {
            id: id.clone(),
            effect: kept,
            error: error.clone(),
            attempts: entry.attempts,
            created_at: entry.created_at,
            at: now,
        });
        match entry.effect {
            Effect::Dispatch(_) => self.note(Note::DispatchFailed {
                dispatch_id: id,
                error,
            }),
            Effect::DeliverReply {
                mut texts, sent, ..
            } => self.note(Note::ReplyFailed {
                error,
                texts: texts.split_off(sent.min(texts.len())),
            }),
            // A failed note is not reported with another note.
            _ => {}
        }
    }

    /// Runs a dead-lettered effect again under a new id (a new idempotency key for n8n and
    /// Kommo); [`Conversation::check_replay`] fenced it. A dispatch carries the messages
    /// unanswered now, in the current epoch, and supersedes the one in flight, as a new
    /// customer message would.
    fn replay(&mut self, id: String, by: String) {
        let Some(i) = self.c.dead.iter().position(|d| d.id == id) else {
            return;
        };
        let dead = self.c.dead.remove(i).expect("position found");
        self.out.changed = true;
        match dead.effect {
            Effect::Dispatch(d) => {
                self.supersede_in_flight();
                let messages = self.c.pending.to_vec();
                let details = if d.kind == DispatchKind::Missed {
                    self.open_missed()
                } else {
                    d.details
                };
                self.dispatch(d.kind, messages, d.seller, details);
            }
            Effect::DeliverReply {
                dispatch_id,
                mut texts,
                sent,
            } => {
                let texts = texts.split_off(sent.min(texts.len()));
                self.queue(
                    Effect::DeliverReply {
                        dispatch_id,
                        texts,
                        sent: 0,
                    },
                    'r',
                );
            }
            Effect::AddNote { note } => self.queue(Effect::AddNote { note }, 'n'),
        }
        let new_id = self.out.queued.last().cloned().unwrap_or_default();
        let detail = format!("as {new_id}, by {by}");
        self.log(What::Replayed, None, Some(&id), Some(&detail));
    }

    /// The idle time passed with nothing going on: the conversation ends, so the next customer
    /// message or proactive start begins a new one. Work still waiting (a dispatch or a reply in
    /// the outbox) postpones the end; a seller's hold or a pause is not ended by idleness.
    fn idle_end(&mut self) {
        if !matches!(
            self.c.phase,
            Phase::BotActive | Phase::Proactive { .. } | Phase::Scheduling { .. }
        ) {
            return;
        }
        let busy = self
            .c
            .outbox
            .entries()
            .any(|e| matches!(e.effect, Effect::Dispatch(_) | Effect::DeliverReply { .. }));
        if busy {
            self.touch();
            return;
        }
        let from = self.c.phase.name();
        self.c.phase = Phase::Idle;
        self.c.in_flight = None;
        self.c.pending.clear();
        self.c.burst_started_at = None;
        self.c.proactive = None;
        self.cancel_timer(TimerKind::Debounce);
        self.cancel_timer(TimerKind::SchedulingTimeout);
        self.log(What::ConversationEnded, None, None, Some(from));
    }

    /// An outbox entry that waited too long (see [`Conversation::expire_effects`]).
    fn expired(&mut self, entry: OutboxEntry) {
        let minutes = self.now.saturating_sub(entry.created_at) / 60_000;
        let waited = format!("waited {minutes} min in the outbox");
        self.log(What::EffectExpired, None, Some(&entry.id), Some(&waited));
        if self
            .c
            .in_flight
            .as_ref()
            .is_some_and(|f| f.dispatch_id == entry.id)
        {
            self.c.in_flight = None;
        }
        if let Effect::Dispatch(d) = &entry.effect {
            // Its messages are handed to the seller by the note, not sent late with the next.
            self.c
                .pending
                .edit()
                .retain(|m| !d.messages.iter().any(|x| x.id == m.id));
        }
        match entry.effect {
            Effect::Dispatch(d) if d.kind == DispatchKind::Message => {
                self.note(Note::MessageExpired { minutes })
            }
            Effect::DeliverReply {
                mut texts, sent, ..
            } => self.note(Note::ReplyExpired {
                minutes,
                texts: texts.split_off(sent.min(texts.len())),
            }),
            _ => {}
        }
    }

    // ---- building blocks ------------------------------------------------------------------------

    fn dispatch(
        &mut self,
        kind: DispatchKind,
        messages: Vec<InboundMessage>,
        seller: Option<SellerRef>,
        details: serde_json::Value,
    ) {
        let dispatch_id = format!(
            "{}-{}-{}",
            self.c.key.account_id, self.c.key.contact_id, self.c.next_seq
        );
        if self.c.recent_dispatches.len() == RECENT_DISPATCHES {
            self.c.recent_dispatches.pop_front();
        }
        self.c.recent_dispatches.push_compact(DispatchRecord {
            dispatch_id: dispatch_id.clone(),
            epoch: self.c.epoch,
            kind,
            answered: false,
        });
        // A `released` dispatch awaits a reply only when it carries messages to answer.
        if kind != DispatchKind::Released || !messages.is_empty() {
            self.c.in_flight = Some(InFlight {
                dispatch_id: dispatch_id.clone(),
                kind,
                superseded: false,
            });
        }
        let detail = serde_json::to_value(kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        self.log(
            What::DispatchQueued,
            None,
            Some(&dispatch_id),
            detail.as_deref(),
        );
        let dispatch = Dispatch {
            dispatch_id,
            kind,
            epoch: self.c.epoch,
            messages,
            seller,
            details,
        };
        self.queue(Effect::Dispatch(dispatch), 'd');
    }

    fn note(&mut self, note: Note) {
        if self.policy.notes {
            self.queue(Effect::AddNote { note }, 'n');
        }
    }

    /// Puts an external effect in the outbox under a fresh id.
    fn queue(&mut self, effect: Effect, tag: char) {
        let seq = self.c.next_seq;
        self.c.next_seq += 1;
        let id = match &effect {
            Effect::Dispatch(d) => d.dispatch_id.clone(),
            _ => format!(
                "{}-{}-{seq}{tag}",
                self.c.key.account_id, self.c.key.contact_id
            ),
        };
        self.out.queued.push(id.clone());
        self.c.outbox.push(
            seq,
            OutboxEntry {
                id,
                effect: effect.clone(),
                created_at: self.now,
                attempts: 0,
                not_before: self.now,
                claim: None,
                last_error: None,
            },
        );
        self.out.effects.push(effect);
        self.out.changed = true;
        self.bound_outbox();
    }

    /// Keeps what waits in the outbox bounded whatever is repeated while n8n or Kommo is
    /// away: a newer `released` dispatch replaces the older ones not sent yet (it carries
    /// everything they did), and at most [`QUEUED_NOTES`] notes wait (the oldest go).
    fn bound_outbox(&mut self) {
        let released = |e: &OutboxEntry| matches!(&e.effect, Effect::Dispatch(d) if d.kind == DispatchKind::Released);
        // Entries are in creation order: the last is the one just queued.
        if let Some(newest) = self.c.outbox.entries().last().filter(|e| released(e)) {
            let newest = newest.id.clone();
            self.cancel_outbox(|e| released(e) && e.claim.is_none() && e.id != newest);
        }
        let waiting_notes: Vec<String> = self
            .c
            .outbox
            .entries()
            .filter(|e| e.claim.is_none() && matches!(e.effect, Effect::AddNote { .. }))
            .map(|e| e.id.clone())
            .collect();
        if let Some(excess) = waiting_notes.len().checked_sub(QUEUED_NOTES) {
            let doomed = &waiting_notes[..excess];
            self.cancel_outbox(|e| doomed.contains(&e.id));
        }
    }

    fn cancel_outbox(&mut self, doomed: impl FnMut(&OutboxEntry) -> bool) {
        for e in self.c.outbox.remove_where(doomed) {
            self.out.changed = true;
            let now = self.now;
            self.c.timeline.push(Entry {
                at: now,
                what: What::EffectCancelled,
                message_id: None,
                dispatch_id: Some(e.id),
                detail: None,
            });
        }
    }

    fn set_timer(&mut self, timer: TimerKind, at: Millis) {
        self.c.timers.insert(timer, at);
        self.out.changed = true;
    }

    fn cancel_timer(&mut self, timer: TimerKind) {
        if self.c.timers.remove(&timer).is_some() {
            self.out.changed = true;
        }
    }

    fn log(
        &mut self,
        what: What,
        message_id: Option<&str>,
        dispatch_id: Option<&str>,
        detail: Option<&str>,
    ) {
        self.out.changed = true;
        self.c.timeline.push(Entry {
            at: self.now,
            what,
            message_id: message_id.map(str::to_owned),
            dispatch_id: dispatch_id.map(str::to_owned),
            detail: detail.map(str::to_owned),
        });
    }
}

/// A reply text reduced to what survives Kommo's rewriting on the way to WhatsApp and back:
/// lowercase letters and digits only (Kommo strips characters outside the BMP, e.g. many emoji,
/// and may rewrite links), with links dropped.
///
/// A long reply is remembered by its first [`ECHO_KEY_CHARS`] characters and its length, so
/// the memory of recent replies stays small whatever n8n sends.
pub fn echo_key(text: &str) -> String {
    let mut key = String::new();
    let mut count = 0usize;
    for c in text
        .split_whitespace()
        .filter(|w| !w.contains("://") && !w.starts_with("www.") && !w.contains("kommo.cc"))
        .flat_map(|w| w.chars())
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
    {
        if count < ECHO_KEY_CHARS {
            key.push(c);
        }
        count += 1;
    }
    if count > ECHO_KEY_CHARS {
        key.push_str(&format!("#{count}"));
    }
    key
}

/// How many characters of a reply its echo key keeps.
pub const ECHO_KEY_CHARS: usize = 256;
