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

/// A conversation's phase, without its details: what indexes, metrics and answers name,
/// serialized as its one spelling (`"human_assigned"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Phase))]
pub enum PhaseName {
    Idle,
    Proactive,
    BotActive,
    Paused,
    HumanAssigned,
    Scheduling,
}

impl PhaseName {
    /// Every phase, for stats that list zero counts too.
    pub const ALL: [PhaseName; 6] = [
        PhaseName::Idle,
        PhaseName::Proactive,
        PhaseName::BotActive,
        PhaseName::Paused,
        PhaseName::HumanAssigned,
        PhaseName::Scheduling,
    ];

    /// The snake_case name used in JSON, indexes and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Idle => "idle",
            PhaseName::Proactive => "proactive",
            PhaseName::BotActive => "bot_active",
            PhaseName::Paused => "paused",
            PhaseName::HumanAssigned => "human_assigned",
            PhaseName::Scheduling => "scheduling",
        }
    }

    /// The phase named `name` (as [`PhaseName::as_str`] spells it).
    pub fn parse(name: &str) -> Option<PhaseName> {
        PhaseName::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the bot may answer the customer in this phase (no seller holds the
    /// conversation and no operator paused the bot).
    pub fn bot_active(self) -> bool {
        !matches!(self, PhaseName::Paused | PhaseName::HumanAssigned)
    }
}

impl Phase {
    /// Which phase this is.
    pub fn kind(&self) -> PhaseName {
        match self {
            Phase::Idle => PhaseName::Idle,
            Phase::Proactive { .. } => PhaseName::Proactive,
            Phase::BotActive => PhaseName::BotActive,
            Phase::Paused { .. } => PhaseName::Paused,
            Phase::HumanAssigned { .. } => PhaseName::HumanAssigned,
            Phase::Scheduling { .. } => PhaseName::Scheduling,
        }
    }

    /// The snake_case name used in JSON, indexes and metrics.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

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
