//! The JSON shape of a conversation for operators (`GET /conversations/{contact_id}`).
//!
//! Flat and readable: the phase by name with the seller beside it, the pending work, timers and
//! outbox, and the timeline that explains every decision.

use std::collections::BTreeMap;

use conversa_actors::conversation::InFlight;
use conversa_actors::effect::Effect;
use conversa_actors::timeline::Entry;
use conversa_actors::{Conversation, Links, Millis, Phase, SellerRef};
use serde::Serialize;

#[derive(Serialize)]
pub struct ConversationView<'a> {
    pub account_id: u64,
    pub contact_id: u64,
    pub phase: &'static str,
    pub seller: Option<&'a SellerRef>,
    pub phase_since: Option<Millis>,
    pub assigned_by: Option<&'a str>,
    pub lease_expires_at: Option<Millis>,
    pub epoch: u64,
    pub version: u64,
    pub links: &'a Links,
    pub pending_messages: Vec<&'a str>,
    pub in_flight: Option<&'a InFlight>,
    pub timers: BTreeMap<String, Millis>,
    pub outbox: Vec<OutboxView<'a>>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub timeline: Vec<&'a Entry>,
}

#[derive(Serialize)]
pub struct OutboxView<'a> {
    pub id: &'a str,
    pub kind: &'static str,
    pub attempts: u32,
    pub not_before: Millis,
    pub claimed_by: Option<&'a str>,
    pub last_error: Option<&'a str>,
}

impl<'a> ConversationView<'a> {
    pub fn new(c: &'a Conversation, version: u64) -> Self {
        let (since, by, expires) = match &c.phase {
            Phase::HumanAssigned {
                since,
                by,
                expires_at,
                ..
            } => (Some(*since), Some(by.as_str()), *expires_at),
            Phase::Paused { since, by } => (Some(*since), Some(by.as_str()), None),
            Phase::Proactive { since, .. } | Phase::Scheduling { since, .. } => {
                (Some(*since), None, None)
            }
            Phase::Idle | Phase::BotActive => (None, None, None),
        };
        Self {
            account_id: c.key.account_id,
            contact_id: c.key.contact_id,
            phase: c.phase.name(),
            seller: c.phase.seller(),
            phase_since: since,
            assigned_by: by,
            lease_expires_at: expires,
            epoch: c.epoch,
            version,
            links: &c.links,
            pending_messages: c.pending.iter().map(|m| m.id.as_str()).collect(),
            in_flight: c.in_flight.as_ref(),
            timers: c
                .timers
                .iter()
                .map(|(k, at)| (timer_name(*k), *at))
                .collect(),
            outbox: c
                .outbox
                .entries()
                .map(|e| OutboxView {
                    id: &e.id,
                    kind: effect_kind(&e.effect),
                    attempts: e.attempts,
                    not_before: e.not_before,
                    claimed_by: e.claim.as_ref().map(|c| c.node.as_str()),
                    last_error: e.last_error.as_deref(),
                })
                .collect(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            timeline: c.timeline.entries().collect(),
        }
    }
}

fn timer_name(kind: conversa_actors::TimerKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn effect_kind(effect: &Effect) -> &'static str {
    match effect {
        Effect::Dispatch(_) => "dispatch",
        Effect::DeliverReply { .. } => "deliver_reply",
        Effect::AddNote { .. } => "add_note",
        Effect::SetTimer { .. } => "set_timer",
        Effect::CancelTimer { .. } => "cancel_timer",
    }
}
