//! n8n's reply reaches the conversation: the use case behind `POST /send-response`.
//!
//! The caller has already proven the reply answers a real dispatch (`src/http/send_response.rs`).
//! Here: the conversation must exist, the texts and details must be within bounds, then the
//! conversation decides. A reply reaches the customer only if the conversation is still the
//! bot's and the dispatch is current; otherwise it is dropped and the answer says why. A
//! delivered reply is reported delivered only once the reply channel took it (waiting up to
//! `REPLY_WAIT_MS`), never before.

use conversa_actors::{
    ContactKey, DropReason, Effect, Event, ExecError, PhaseName, Progress, Rejection,
};
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::flows::FlowError;
use crate::flows::limits::{MAX_DETAILS_BYTES, bounded_json, bounded_text};
use crate::reply::Strategy;
use crate::state::AppState;

/// The longest part of a reply, in characters (WhatsApp's limit for one text message).
pub const MAX_REPLY_CHARS: usize = 4096;
/// The most parts in `messages` (`text`, when given too, goes first: 11 WhatsApp messages at
/// most).
pub const MAX_REPLY_PARTS: usize = 10;
/// The longest `dispatch_id` (conversa's are far shorter).
pub const MAX_DISPATCH_ID_CHARS: usize = 128;

/// What n8n sent back, as read by the edge.
pub struct ReplyIn {
    pub contact_id: u64,
    pub text: Option<String>,
    /// The parts of a multi-part reply, after `text`.
    pub parts: Vec<String>,
    pub dispatch_id: Option<String>,
    /// A scheduling outcome: `{"status": "confirmed" | "failed", ...details}`.
    pub scheduling: Option<Value>,
}

/// What became of the reply and of the scheduling outcome.
pub struct Received {
    pub contact_id: u64,
    pub dispatch_id: Option<String>,
    /// Present when there was a reply.
    pub delivery: Option<Delivery>,
    /// The phase after the last event applied.
    pub phase: Option<PhaseName>,
    pub scheduling: Option<Settled>,
}

/// What can truthfully be said about a reply's delivery.
pub struct Delivery {
    /// The reply channel took every part of it.
    pub delivered: bool,
    pub channel: Option<Strategy>,
    pub reason: Option<Undelivered>,
    /// The channel's last error.
    pub error: Option<String>,
    /// How many parts of a multi-part reply went out.
    pub parts_sent: Option<usize>,
}

/// Why a reply was not (yet) delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undelivered {
    /// The conversation dropped it before any delivery.
    Dropped(DropReason),
    /// Still in the outbox, being retried or waiting for its next part.
    Queued,
    /// Nothing to deliver to.
    NoLead,
    KommoNotConfigured,
    /// The Salesbot may have run; never sent again.
    OutcomeUnknown,
    Failed,
}

impl Undelivered {
    pub fn as_str(self) -> &'static str {
        match self {
            Undelivered::Dropped(reason) => reason.as_str(),
            Undelivered::Queued => "queued",
            Undelivered::NoLead => "no_lead",
            Undelivered::KommoNotConfigured => "kommo_not_configured",
            Undelivered::OutcomeUnknown => "outcome_unknown",
            Undelivered::Failed => "failed",
        }
    }
}

impl Serialize for Undelivered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How a scheduling outcome was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Settled {
    Confirmed,
    Failed,
    /// It answers another dispatch than the scheduling request in progress.
    StaleDispatch,
}

impl Delivery {
    fn not(reason: Undelivered) -> Self {
        Delivery {
            delivered: false,
            channel: None,
            reason: Some(reason),
            error: None,
            parts_sent: None,
        }
    }
}

/// Hands n8n's reply (and/or scheduling outcome) to the conversation of `reply.contact_id`.
pub async fn receive(app: &AppState, reply: ReplyIn) -> Result<Received, FlowError> {
    let key = app.contact(reply.contact_id);
    if app.engine().conversation(&key).await?.is_none() {
        return Err(FlowError::NotFound(format!(
            "no conversation for contact {}",
            key.contact_id
        )));
    }
    if let Some(text) = &reply.text {
        bounded_text("text", text, MAX_REPLY_CHARS)?;
    }
    if reply.parts.len() > MAX_REPLY_PARTS {
        return Err(FlowError::invalid(
            "messages",
            format!(
                "`messages` has at most {MAX_REPLY_PARTS} parts, got {}",
                reply.parts.len()
            ),
        ));
    }
    for (i, part) in reply.parts.iter().enumerate() {
        bounded_text(&format!("messages[{i}]"), part, MAX_REPLY_CHARS)?;
    }
    if let Some(scheduling) = &reply.scheduling {
        bounded_json("scheduling", scheduling, MAX_DETAILS_BYTES)?;
    }
    if let Some(id) = &reply.dispatch_id {
        bounded_text("dispatch_id", id, MAX_DISPATCH_ID_CHARS)?;
    }
    let texts: Vec<String> = reply
        .text
        .into_iter()
        .chain(reply.parts)
        .filter(|t| !t.trim().is_empty())
        .collect();
    if texts.is_empty() && reply.scheduling.is_none() {
        return Err(FlowError::invalid(
            "text",
            "a reply needs `text`, `messages` or `scheduling`",
        ));
    }
    let mut received = Received {
        contact_id: key.contact_id,
        dispatch_id: reply.dispatch_id.clone(),
        delivery: None,
        phase: None,
        scheduling: None,
    };
    if !texts.is_empty() {
        let event = Event::Reply {
            dispatch_id: reply.dispatch_id.clone(),
            texts,
        };
        let applied = app.engine().apply(key, event).await?;
        let outcome = applied.outcome.map_err(refused)?;
        received.delivery = Some(match (outcome.dropped, outcome.queued.first()) {
            (Some(reason), _) => Delivery::not(Undelivered::Dropped(reason)),
            (None, Some(id)) => follow(app, key, id).await,
            (None, None) => Delivery::not(Undelivered::Failed),
        });
        received.phase = Some(applied.phase.kind());
    }
    if let Some(scheduling) = reply.scheduling {
        let confirmed = match scheduling.get("status").and_then(Value::as_str) {
            Some("confirmed") => true,
            Some("failed") => false,
            _ => {
                return Err(FlowError::invalid(
                    "scheduling.status",
                    "scheduling.status must be \"confirmed\" or \"failed\"",
                ));
            }
        };
        let event = Event::SchedulingOutcome {
            dispatch_id: reply.dispatch_id,
            confirmed,
            details: scheduling,
        };
        let applied = app.engine().apply(key, event).await?;
        let outcome = applied.outcome.map_err(refused)?;
        received.scheduling = Some(if outcome.dropped.is_some() {
            Settled::StaleDispatch
        } else if confirmed {
            Settled::Confirmed
        } else {
            Settled::Failed
        });
        received.phase = Some(applied.phase.kind());
    }
    Ok(received)
}

/// Waits (up to `REPLY_WAIT_MS`) for the reply channel to take the reply queued under `id`.
async fn follow(app: &AppState, key: ContactKey, id: &str) -> Delivery {
    let Some(channel) = app.0.reply_channel else {
        return Delivery::not(Undelivered::KommoNotConfigured);
    };
    let progress = app.engine().follow(id, app.0.reply_wait).await;
    let failed = |e: &ExecError| {
        let reason = match e {
            ExecError::NoLead(_) => Undelivered::NoLead,
            ExecError::Uncertain(_) => Undelivered::OutcomeUnknown,
            ExecError::Retry(_) => Undelivered::Queued,
            ExecError::Permanent(_) => Undelivered::Failed,
        };
        Delivery {
            error: Some(e.to_string()),
            ..Delivery::not(reason)
        }
    };
    match progress {
        Progress::Finished(Ok(())) => Delivery {
            delivered: true,
            channel: Some(channel),
            reason: None,
            error: None,
            parts_sent: None,
        },
        Progress::Finished(Err(e)) => failed(&e),
        Progress::Waiting { last } => {
            let mut answer = match &last {
                Some(Err(e)) => Delivery {
                    reason: Some(Undelivered::Queued),
                    ..failed(e)
                },
                _ => Delivery::not(Undelivered::Queued),
            };
            if let Ok(Some((c, _))) = app.engine().conversation(&key).await
                && let Some(Effect::DeliverReply { sent, .. }) =
                    c.outbox().get(id).map(|e| &e.effect)
            {
                answer.parts_sent = Some(*sent);
            }
            answer
        }
    }
}

fn refused(r: Rejection) -> FlowError {
    match r {
        Rejection::EmptyReply => FlowError::invalid("text", r.to_string()),
        other => FlowError::Conflict {
            code: "conflict",
            message: other.to_string(),
            holder: None,
        },
    }
}
