//! Delivering the AI's reply to the customer's WhatsApp, and notes to the seller, through Kommo.
//!
//! Kommo-managed WhatsApp accepts API-driven messages only through a Salesbot (kommo-api.md
//! §4), so the `salesbot` strategy writes the text into a lead field (`KOMMO_REPLY_FIELD_ID`)
//! and runs the bot `KOMMO_REPLY_BOT_ID`, whose single "send message" step prints that field.
//! The `note` strategy only leaves the reply as a note on the lead: a safe dry run, and the
//! default when no bot is configured.
//!
//! Two rules keep a customer from getting a message twice or a wrong one:
//! * one reply in flight per lead (the field is shared: a second write before the bot read the
//!   first would replace it), so deliveries for a lead are serialised here;
//! * no blind retry once the bot was asked to run: a 5xx from the run may hide a run that
//!   happened, so it is reported as *outcome unknown* (timeline + note), never retried. Errors
//!   before that point (writing the field) are retried as usual.

use std::sync::Arc;

use async_trait::async_trait;
use conversa_actors::{Effect, ExecError, Executor, Job};
use dashmap::DashMap;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::kommo::client::{KommoClient, LeadPatch};
use crate::kommo::error::KommoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Field + Salesbot run: reaches the customer's WhatsApp.
    Salesbot,
    /// A note on the lead only (dry run).
    Note,
}

pub struct ReplyChannel {
    kommo: Arc<KommoClient>,
    strategy: Strategy,
    field_id: Option<u64>,
    bot_id: Option<u64>,
    in_flight: DashMap<u64, Arc<Mutex<()>>>,
}

impl ReplyChannel {
    /// `salesbot` needs both ids; without them the channel falls back to `note`.
    pub fn new(
        kommo: Arc<KommoClient>,
        strategy: Strategy,
        field_id: Option<u64>,
        bot_id: Option<u64>,
    ) -> Self {
        let strategy = match (strategy, field_id, bot_id) {
            (Strategy::Salesbot, Some(_), Some(_)) => Strategy::Salesbot,
            (Strategy::Salesbot, _, _) => {
                warn!(
                    "REPLY_CHANNEL=salesbot needs KOMMO_REPLY_FIELD_ID and KOMMO_REPLY_BOT_ID; using notes"
                );
                Strategy::Note
            }
            (s, _, _) => s,
        };
        Self {
            kommo,
            strategy,
            field_id,
            bot_id,
            in_flight: DashMap::new(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }
}

/// The lead a job concerns: from the conversation's links, else through its talk.
pub async fn lead_of(kommo: &KommoClient, job: &Job) -> Result<u64, ExecError> {
    if let Some(lead) = job.links.lead_id {
        return Ok(lead);
    }
    if let Some(talk_id) = job.links.talk_id {
        match kommo.talk(talk_id).await {
            Ok(Some(talk)) => {
                if let Some(lead) = talk.lead_id {
                    return Ok(lead);
                }
            }
            Ok(None) => {}
            Err(e) => return Err(classify(e)),
        }
    }
    Err(ExecError::Permanent(format!(
        "contact {} has no lead linked: nowhere to deliver",
        job.key
    )))
}

/// A Kommo error as an execution outcome.
pub fn classify(e: KommoError) -> ExecError {
    if e.is_retryable() {
        ExecError::Retry(e.to_string())
    } else {
        ExecError::Permanent(e.to_string())
    }
}

#[async_trait]
impl Executor for ReplyChannel {
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        let Effect::DeliverReply { texts, .. } = &job.effect else {
            return Err(ExecError::Permanent("not a reply".into()));
        };
        let text = texts.join("\n\n");
        let lead = lead_of(&self.kommo, job).await?;
        let slot = self.in_flight.entry(lead).or_default().clone();
        let _one_at_a_time = slot.lock().await;
        match self.strategy {
            Strategy::Note => {
                let note = format!("Resposta da IA (modo nota, não enviada ao WhatsApp):\n{text}");
                self.kommo.add_note(lead, &note).await.map_err(classify)?;
            }
            Strategy::Salesbot => {
                let (Some(field), Some(bot)) = (self.field_id, self.bot_id) else {
                    unreachable!("checked in new")
                };
                let patch = LeadPatch {
                    custom_fields: vec![(field, serde_json::Value::String(text.clone()))],
                    ..LeadPatch::default()
                };
                self.kommo
                    .patch_lead(lead, &patch)
                    .await
                    .map_err(classify)?;
                // While a run request is out, a timeout may leave the bot run done: the client
                // marks `committed` then, and the engine never retries blindly.
                match self.kommo.run_salesbot(bot, lead, &job.committed).await {
                    Ok(()) => {}
                    Err(e @ (KommoError::Server { .. } | KommoError::Network(_))) => {
                        // The run may have happened: do not send it again.
                        warn!(contact = %job.key, dispatch_id = %job.id, error = %e, "reply outcome unknown");
                        return Err(ExecError::Uncertain(e.to_string()));
                    }
                    Err(e) => return Err(classify(e)),
                }
            }
        }
        info!(contact = %job.key, dispatch_id = %job.id, lead, strategy = ?self.strategy, "reply delivered");
        Ok(())
    }
}

/// Writes the notes a seller should see on the lead.
pub struct LeadNotes {
    kommo: Arc<KommoClient>,
}

impl LeadNotes {
    pub fn new(kommo: Arc<KommoClient>) -> Self {
        Self { kommo }
    }
}

#[async_trait]
impl Executor for LeadNotes {
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        let Effect::AddNote { text } = &job.effect else {
            return Err(ExecError::Permanent("not a note".into()));
        };
        let lead = lead_of(&self.kommo, job).await?;
        self.kommo.add_note(lead, text).await.map_err(classify)?;
        Ok(())
    }
}
