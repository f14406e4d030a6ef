//! The JSON shape of a conversation for operators (`GET /conversations/{contact_id}`).
//!
//! Flat and readable: the phase by name with the seller beside it, the pending work, timers and
//! outbox, and the timeline that explains every decision.

use std::collections::BTreeMap;

use conversa_actors::conversation::{InFlight, MissedMessage};
use conversa_actors::effect::Effect;
use conversa_actors::timeline::Entry;
use conversa_actors::{Conversation, Links, Millis, Phase, PhaseName, SellerRef, TimerKind};
use serde::Serialize;
use utoipa::ToSchema;

/// A conversation: phase, seller, pending work, timers, outbox and the timeline of its last
/// decisions (times are Unix milliseconds).
#[derive(Serialize, ToSchema)]
#[schema(as = Conversation, example = json!({
    "account_id": 0, "contact_id": 1298200, "phase": "human_assigned",
    "seller": {"id": "custom-1", "name": "Ana Souza"},
    "phase_since": 1767225660000u64, "assigned_by": "Ana Souza via api",
    "lease_expires_at": 1767227460000u64, "epoch": 1, "version": 5,
    "links": {"lead_id": 878244, "talk_id": 109},
    "pending_messages": [], "in_flight": null, "missed_messages": [],
    "timers": {"lease_expiry": 1767227460000u64},
    "outbox": [], "created_at": 1767225600000u64, "updated_at": 1767225660000u64,
    "timeline": [
        {"at": 1767225600000u64, "what": "message_in",
         "message_id": "c0925911-ce8f-4994-b117-542b5f28d036"},
        {"at": 1767225603000u64, "what": "dispatch_sent", "dispatch_id": "0-1298200-1"},
        {"at": 1767225660000u64, "what": "takeover", "detail": "Ana Souza via api"},
        {"at": 1767225661000u64, "what": "reply_dropped", "dispatch_id": "0-1298200-1",
         "detail": "human_assigned"}
    ]}))]
pub struct ConversationView {
    pub account_id: u64,
    pub contact_id: u64,
    pub phase: PhaseName,
    /// The seller holding the conversation, else the one who opened it proactively.
    pub seller: Option<SellerRef>,
    /// The practice area of a proactive conversation.
    pub area_atuacao: Option<String>,
    pub phase_since: Option<u64>,
    pub assigned_by: Option<String>,
    /// When a seller's hold returns to the bot.
    pub lease_expires_at: Option<u64>,
    /// Bumped on every change of who may speak.
    pub epoch: u64,
    /// The snapshot's version (compare-and-set).
    pub version: u64,
    pub links: Links,
    /// Ids of customer messages waiting for the debounce.
    pub pending_messages: Vec<String>,
    pub in_flight: Option<InFlight>,
    /// Customer messages Kommo has and conversa never received (gap detection), until they
    /// arrive after all.
    pub missed_messages: Vec<MissedMessage>,
    /// Armed timers: `debounce`, `lease_nudge`, `lease_expiry`, `scheduling_timeout`, `idle_end` → when.
    #[schema(value_type = BTreeMap<String, u64>)]
    pub timers: BTreeMap<TimerKind, Millis>,
    pub outbox: Vec<OutboxView>,
    #[schema(value_type = u64)]
    pub created_at: Millis,
    #[schema(value_type = u64)]
    pub updated_at: Millis,
    pub timeline: Vec<Entry>,
}

/// An effect waiting to run (or being retried).
#[derive(Serialize, ToSchema)]
#[schema(as = OutboxEntry)]
pub struct OutboxView {
    pub id: String,
    /// `dispatch`, `deliver_reply`, `add_note`.
    pub kind: &'static str,
    pub attempts: u32,
    #[schema(value_type = u64)]
    pub not_before: Millis,
    pub claimed_by: Option<String>,
    pub last_error: Option<String>,
}

impl ConversationView {
    pub fn new(c: Conversation, version: u64) -> Self {
        let (since, by, expires) = match c.phase() {
            Phase::HumanAssigned {
                since,
                by,
                expires_at,
                ..
            } => (Some(*since), Some(by.clone()), *expires_at),
            Phase::Paused { since, by } => (Some(*since), Some(by.clone()), None),
            Phase::Proactive { since, .. } | Phase::Scheduling { since, .. } => {
                (Some(*since), None, None)
            }
            Phase::Idle | Phase::BotActive => (None, None, None),
        };
        Self {
            account_id: c.key().account_id,
            contact_id: c.key().contact_id,
            phase: c.phase().kind(),
            seller: c.held_or_opened_by().cloned(),
            area_atuacao: c.proactive().and_then(|o| o.area.clone()),
            phase_since: since,
            assigned_by: by,
            lease_expires_at: expires,
            epoch: c.epoch(),
            version,
            pending_messages: c.pending().iter().map(|m| m.id.clone()).collect(),
            timers: c.timers().clone(),
            outbox: c
                .outbox()
                .entries()
                .map(|e| OutboxView {
                    id: e.id.clone(),
                    kind: effect_kind(&e.effect),
                    attempts: e.attempts,
                    not_before: e.not_before,
                    claimed_by: e.claim.as_ref().map(|c| c.node.clone()),
                    last_error: e.last_error.clone(),
                })
                .collect(),
            created_at: c.created_at(),
            updated_at: c.updated_at(),
            timeline: c.timeline().entries().cloned().collect(),
            links: c.links().clone(),
            in_flight: c.in_flight().cloned(),
            missed_messages: c.missed().iter().cloned().collect(),
        }
    }
}

pub fn effect_kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::Dispatch(_) => "dispatch",
        Effect::DeliverReply { .. } => "deliver_reply",
        Effect::AddNote { .. } => "add_note",
    }
}
