//! The phase a conversation is in: who may talk to the customer right now.

use serde::{Deserialize, Serialize};

use crate::contact::Millis;
use crate::message::SellerRef;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Nothing going on: the next customer message starts the bot.
    Idle,
    /// The bot opened the conversation (a form, a download, a booking); waiting for the customer.
    Proactive { since: Millis, trigger: String },
    /// The AI answers the customer.
    BotActive,
    /// An operator switched the bot off; no seller holds the conversation.
    Paused { since: Millis, by: String },
    /// A seller holds the conversation; the bot is silent until release or lease expiry.
    HumanAssigned {
        seller: SellerRef,
        since: Millis,
        by: String,
        expires_at: Option<Millis>,
    },
    /// n8n is arranging a meeting with the responsible seller.
    Scheduling {
        since: Millis,
        request: serde_json::Value,
    },
}

impl Phase {
    /// The snake_case name used in JSON, indexes and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Proactive { .. } => "proactive",
            Phase::BotActive => "bot_active",
            Phase::Paused { .. } => "paused",
            Phase::HumanAssigned { .. } => "human_assigned",
            Phase::Scheduling { .. } => "scheduling",
        }
    }

    /// Every phase name, for stats that list zero counts too.
    pub const NAMES: [&'static str; 6] = [
        "idle",
        "proactive",
        "bot_active",
        "paused",
        "human_assigned",
        "scheduling",
    ];

    pub fn seller(&self) -> Option<&SellerRef> {
        match self {
            Phase::HumanAssigned { seller, .. } => Some(seller),
            _ => None,
        }
    }

    pub fn is_human(&self) -> bool {
        matches!(self, Phase::HumanAssigned { .. })
    }
}
