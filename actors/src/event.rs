//! What can happen to a conversation: the inputs of the state machine.

use serde::{Deserialize, Serialize};

use crate::effect::TimerKind;
use crate::message::{InboundMessage, SellerRef};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The customer wrote (Kommo `message[add]`, incoming).
    CustomerMessage(InboundMessage),
    /// A human (a seller in the Kommo chat, not an echo of a bot reply) wrote to the customer.
    SellerSpoke {
        seller: SellerRef,
        message_id: String,
    },
    /// A message went out in the customer's chat (Kommo `message[add]`, outgoing). If it is
    /// the echo of a reply this engine sent it is only recorded; otherwise a human wrote it and
    /// it counts as [`Event::SellerSpoke`].
    OutgoingMessage {
        message_id: String,
        text: String,
        author: SellerRef,
    },
    /// Kommo's events list customer messages (`incoming_chat_message`) whose webhook had not
    /// reached conversa within the grace time (gap detection): one event per contact and look.
    MessagesMissed {
        messages: Vec<crate::conversation::MissedMessage>,
    },
    /// Kommo told us which lead, talk or chat the contact's conversation belongs to.
    LinksSeen(crate::message::Links),
    /// An operator switched the bot off or on (`POST /bot-control`).
    BotControl { command: BotCommand, by: String },
    /// A seller takes the conversation (`/assumir`).
    Assume { seller: SellerRef, by: String },
    /// The conversation goes back to the bot (`/liberar`). `seller` is who asks; `None` for an
    /// operator, who may release anyone's hold.
    Release {
        seller: Option<SellerRef>,
        by: String,
    },
    /// n8n answered a dispatch (`POST /send-response`).
    Reply {
        dispatch_id: Option<String>,
        texts: Vec<String>,
    },
    /// A marketing event opens a conversation (`POST /start-proactive`).
    ProactiveStart {
        trigger: String,
        seller: SellerRef,
        /// The practice area (`area_atuacao`) the conversation is about.
        #[serde(default)]
        area: Option<String>,
        details: serde_json::Value,
    },
    /// Someone asked for a meeting with the seller (`POST /agendamento/request`).
    SchedulingRequest {
        seller: Option<SellerRef>,
        request: serde_json::Value,
    },
    /// n8n settled the scheduling request.
    SchedulingOutcome {
        dispatch_id: Option<String>,
        confirmed: bool,
        details: serde_json::Value,
    },
    /// A timer the conversation set has come due.
    TimerFired { timer: TimerKind },
    /// An outbox entry was executed.
    EffectDone { id: String },
    /// An outbox entry failed; `retryable` = worth trying again later.
    EffectFailed {
        id: String,
        error: String,
        retryable: bool,
    },
    /// An operator runs a dead-lettered effect again, under a new id (`by`: who asked).
    Replay { id: String, by: String },
    /// An operator gives up on a dead-lettered effect.
    DropDeadLetter { id: String, by: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BotCommand {
    Pause,
    Resume,
}

impl Event {
    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Event::CustomerMessage(_) => "customer_message",
            Event::SellerSpoke { .. } => "seller_spoke",
            Event::OutgoingMessage { .. } => "outgoing_message",
            Event::MessagesMissed { .. } => "messages_missed",
            Event::LinksSeen(_) => "links_seen",
            Event::BotControl { .. } => "bot_control",
            Event::Assume { .. } => "assume",
            Event::Release { .. } => "release",
            Event::Reply { .. } => "reply",
            Event::ProactiveStart { .. } => "proactive_start",
            Event::SchedulingRequest { .. } => "scheduling_request",
            Event::SchedulingOutcome { .. } => "scheduling_outcome",
            Event::TimerFired { .. } => "timer_fired",
            Event::EffectDone { .. } => "effect_done",
            Event::EffectFailed { .. } => "effect_failed",
            Event::Replay { .. } => "replay",
            Event::DropDeadLetter { .. } => "drop_dead_letter",
        }
    }
}
