//! Delivering the AI's reply to the customer's WhatsApp, and notes to the seller, through Kommo.
//!
//! Kommo-managed WhatsApp accepts API-driven messages only through a Salesbot (docs/kommo.md,
//! *Writing*), so the `salesbot` strategy writes the text into a lead field (`KOMMO_REPLY_FIELD_ID`)
//! and runs the bot `KOMMO_REPLY_BOT_ID`, whose single "send message" step prints that field.
//! The `note` strategy only leaves the reply as a note on the lead: a safe dry run, and the
//! default when no bot is configured. A reply in parts is one WhatsApp message per part, sent
//! in order, one part per execution (the conversation keeps which parts went out).
//!
//! Two rules keep a customer from getting a message twice or a wrong one:
//! * one reply in flight per lead (the field is shared: a second write before the bot read the
//!   first would replace it), so deliveries for a lead are serialised here;
//! * no blind retry once the bot was asked to run: a 5xx from the run may hide a run that
//!   happened, so it is reported as *outcome unknown* (timeline + note), never retried. Errors
//!   before that point (writing the field) are retried as usual.

use std::sync::Arc;

use async_trait::async_trait;
use conversa_actors::{Effect, ExecError, Executor, Job, Links};
use dashmap::DashMap;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::kommo::client::{KommoClient, LeadPatch, Talk};
use crate::kommo::error::KommoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Field + Salesbot run: reaches the customer's WhatsApp.
    Salesbot,
    /// A note on the lead only (dry run).
    Note,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Salesbot => "salesbot",
            Strategy::Note => "note",
        }
    }
}

/// The reply channel with what it needs: the configuration is checked at start
/// ([`crate::config::Config::check_consistency`]), so a Salesbot channel always has its ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Salesbot { field: u64, bot: u64 },
    Note,
}

impl Channel {
    pub fn strategy(self) -> Strategy {
        match self {
            Channel::Salesbot { .. } => Strategy::Salesbot,
            Channel::Note => Strategy::Note,
        }
    }
}

pub struct ReplyChannel {
    kommo: Arc<KommoClient>,
    channel: Channel,
    in_flight: DashMap<u64, Arc<Mutex<()>>>,
}

impl ReplyChannel {
    pub fn new(kommo: Arc<KommoClient>, channel: Channel) -> Self {
        Self {
            kommo,
            channel,
            in_flight: DashMap::new(),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.channel.strategy()
    }
}

/// The lead a job concerns: the conversation's link, else the talk's lead, else the newest
/// lead Kommo lists for the contact (`GET /api/v4/contacts/{id}?with=leads`). A lead found
/// this way is handed back in `job.found`, so the conversation links it and the next job asks
/// no one.
pub async fn lead_of(kommo: &KommoClient, job: &Job) -> Result<u64, ExecError> {
    if let Some(lead) = job.links.lead_id {
        return Ok(lead);
    }
    let found = |lead: u64| {
        job.found.set(Links {
            lead_id: Some(lead),
            ..Links::default()
        });
        Ok(lead)
    };
    if let Some(talk_id) = job.links.talk_id {
        match kommo.talk(talk_id).await {
            Ok(Some(Talk {
                lead_id: Some(lead),
                ..
            })) => return found(lead),
            Ok(_) => {}
            Err(e) => return Err(classify(e)),
        }
    }
    match kommo.contact(job.key.contact_id).await {
        Ok(Some(contact)) => {
            if let Some(lead) = contact.lead_ids.iter().copied().max() {
                return found(lead);
            }
        }
        Ok(None) => {}
        Err(e) => return Err(classify(e)),
    }
    Err(ExecError::NoLead(format!(
        "contact {} has no lead in Kommo: nowhere to deliver",
        job.key.contact_id
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
    /// Sends the reply's next part (one WhatsApp message per part; the conversation moves on
    /// to the following part when this one is done).
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        let Some(text) = job.effect.next_part() else {
            return Err(ExecError::Permanent(
                "not a reply, or nothing left to send".into(),
            ));
        };
        let lead = lead_of(&self.kommo, job).await?;
        let slot = self.in_flight.entry(lead).or_default().clone();
        let _one_at_a_time = slot.lock().await;
        match self.channel {
            Channel::Note => {
                let note = format!("Resposta da IA (modo nota, não enviada ao WhatsApp):\n{text}");
                self.kommo.add_note(lead, &note).await.map_err(classify)?;
            }
            Channel::Salesbot { field, bot } => {
                let patch = LeadPatch {
                    custom_fields: vec![(field, serde_json::Value::String(text.to_owned()))],
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
        info!(contact = %job.key, dispatch_id = %job.id, lead, channel = self.strategy().as_str(), "reply delivered");
        Ok(())
    }
}

/// Writes the notes a seller should see on the lead, in their language.
pub struct LeadNotes {
    kommo: Arc<KommoClient>,
    language: crate::notes::Language,
    time_zone: jiff::tz::TimeZone,
}

impl LeadNotes {
    pub fn new(
        kommo: Arc<KommoClient>,
        language: crate::notes::Language,
        time_zone: jiff::tz::TimeZone,
    ) -> Self {
        Self {
            kommo,
            language,
            time_zone,
        }
    }
}

#[async_trait]
impl Executor for LeadNotes {
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        let Effect::AddNote { note } = &job.effect else {
            return Err(ExecError::Permanent("not a note".into()));
        };
        let lead = lead_of(&self.kommo, job).await?;
        let text = crate::notes::render(note, self.language, &self.time_zone);
        self.kommo.add_note(lead, &text).await.map_err(classify)?;
        Ok(())
    }
}
