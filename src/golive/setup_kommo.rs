//! `conversa setup kommo`: makes a Kommo account ready to answer customers, as far as the API
//! allows, and says exactly what is left to do by hand.
//!
//! 1. the token works (`GET /api/v4/account`): the account's id and subdomain are noted;
//! 2. the lead text field replies are written into exists (`KOMMO_REPLY_FIELD_ID`, else the one
//!    with code [`REPLY_FIELD_CODE`], else created);
//! 3. a webhook to `PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>` exists, is enabled and carries
//!    every event of [`WEBHOOK_EVENTS`] (created, completed, or — when Kommo disabled it —
//!    removed and registered again: the API has no "enable");
//! 4. the Salesbot cannot be created or listed through the API: its one step is printed.
//!
//! Idempotent: a second run on a ready account changes nothing. `dry_run` reads only and says
//! what it would do. Nothing is prompted, so a script can run it.

use std::collections::BTreeSet;

use super::target::{
    REPLY_FIELD_CODE, REPLY_FIELD_KIND, REPLY_FIELD_NAME, TEXT_KINDS, Target, WEBHOOK_EVENTS,
};
use crate::kommo::admin::{LeadField, Subscription};
use crate::kommo::client::KommoClient;
use crate::kommo::error::KommoError;
use crate::reply::Strategy;

/// How one step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    /// Changed in Kommo now.
    Done,
    /// Already as it should be.
    Unchanged,
    /// `--dry-run`: would be changed.
    WouldDo,
    /// Left to a human (the API cannot do it).
    ToDo,
    Failed,
}

impl StepStatus {
    pub fn label(self) -> &'static str {
        match self {
            StepStatus::Done => "done",
            StepStatus::Unchanged => "unchanged",
            StepStatus::WouldDo => "would do",
            StepStatus::ToDo => "to do",
            StepStatus::Failed => "FAILED",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub what: &'static str,
    pub status: StepStatus,
    pub detail: String,
}

/// What the run did, and the variables it found.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    pub steps: Vec<Step>,
    /// Variables to put in `.env` (`--write-env`), in order.
    pub env: Vec<(String, String)>,
}

impl Setup {
    fn step(&mut self, what: &'static str, status: StepStatus, detail: impl Into<String>) {
        self.steps.push(Step {
            what,
            status,
            detail: detail.into(),
        });
    }

    fn env(&mut self, name: &str, value: impl ToString) {
        self.env.push((name.to_owned(), value.to_string()));
    }

    /// No step failed.
    pub fn succeeded(&self) -> bool {
        self.steps.iter().all(|s| s.status != StepStatus::Failed)
    }

    pub fn count(&self, status: StepStatus) -> usize {
        self.steps.iter().filter(|s| s.status == status).count()
    }
}

/// Runs the setup against `kommo` (read only with `dry_run`).
pub async fn run(t: &Target, kommo: &KommoClient, dry_run: bool) -> Setup {
    let mut out = Setup::default();
    let account = match kommo.account().await {
        Ok(a) => a,
        Err(e) => {
            out.step(
                "Kommo token",
                StepStatus::Failed,
                format!(
                    "GET /api/v4/account failed: {e} — check KOMMO_API_URL and KOMMO_ACCESS_TOKEN"
                ),
            );
            return out;
        }
    };
    out.step(
        "Kommo token",
        StepStatus::Unchanged,
        format!(
            "works: account {} ({}, {})",
            account.name, account.id, account.subdomain
        ),
    );
    if t.kommo_account_id != account.id {
        out.env("KOMMO_ACCOUNT_ID", account.id);
    }
    out.env("KOMMO_SUBDOMAIN", &account.subdomain);

    let field = reply_field(t, kommo, dry_run, &mut out).await;
    webhook(t, kommo, dry_run, &mut out).await;
    salesbot(t, field, &mut out);
    if t.reply_channel == Some(Strategy::Note)
        && t.reply_field_id.is_some()
        && t.reply_bot_id.is_some()
    {
        out.step(
            "reply channel",
            StepStatus::ToDo,
            "REPLY_CHANNEL=note keeps replies as notes: remove it (or set salesbot)",
        );
    }
    out
}

async fn reply_field(
    t: &Target,
    kommo: &KommoClient,
    dry_run: bool,
    out: &mut Setup,
) -> Option<u64> {
    const WHAT: &str = "reply field";
    let fields = match kommo.lead_fields().await {
        Ok(fields) => fields,
        Err(e) => {
            out.step(
                WHAT,
                StepStatus::Failed,
                format!("GET /api/v4/leads/custom_fields failed: {e}"),
            );
            return None;
        }
    };
    let describe = |f: &LeadField| format!("lead field {} \"{}\" ({})", f.id, f.name, f.kind);
    let mut note = String::new();
    if let Some(id) = t.reply_field_id {
        match fields.iter().find(|f| f.id == id) {
            Some(f) if TEXT_KINDS.contains(&f.kind.as_str()) => {
                out.step(
                    WHAT,
                    StepStatus::Unchanged,
                    format!("{} (KOMMO_REPLY_FIELD_ID)", describe(f)),
                );
                return Some(id);
            }
            Some(f) => {
                out.step(
                    WHAT,
                    StepStatus::Failed,
                    format!(
                        "KOMMO_REPLY_FIELD_ID={id} is a {} field; the Salesbot needs text: unset it and run again",
                        f.kind
                    ),
                );
                return None;
            }
            None => {
                note = format!(" (KOMMO_REPLY_FIELD_ID={id} names no lead field of this account)")
            }
        }
    }
    let found = fields.iter().find(|f| {
        TEXT_KINDS.contains(&f.kind.as_str())
            && (f.code.as_deref() == Some(REPLY_FIELD_CODE) || f.name == REPLY_FIELD_NAME)
    });
    if let Some(f) = found {
        out.step(
            WHAT,
            StepStatus::Unchanged,
            format!("found {}{note}", describe(f)),
        );
        out.env("KOMMO_REPLY_FIELD_ID", f.id);
        return Some(f.id);
    }
    if dry_run {
        out.step(
            WHAT,
            StepStatus::WouldDo,
            format!("would create lead field \"{REPLY_FIELD_NAME}\" ({REPLY_FIELD_KIND}, code {REPLY_FIELD_CODE}){note}"),
        );
        return None;
    }
    match kommo
        .create_lead_field(REPLY_FIELD_NAME, REPLY_FIELD_CODE, REPLY_FIELD_KIND)
        .await
    {
        Ok(f) => {
            out.step(
                WHAT,
                StepStatus::Done,
                format!("created {}{note}", describe(&f)),
            );
            out.env("KOMMO_REPLY_FIELD_ID", f.id);
            Some(f.id)
        }
        Err(e) => {
            out.step(
                WHAT,
                StepStatus::Failed,
                format!("POST /api/v4/leads/custom_fields failed: {e}"),
            );
            None
        }
    }
}

async fn webhook(t: &Target, kommo: &KommoClient, dry_run: bool, out: &mut Setup) {
    const WHAT: &str = "webhook";
    let Some(destination) = t.webhook_destination() else {
        let missing: Vec<&str> = [
            ("PUBLIC_URL", t.public_url.is_none()),
            ("WEBHOOK_SECRET", t.webhook_secret.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
        .collect();
        out.step(
            WHAT,
            StepStatus::Failed,
            format!(
                "{} unset: the webhook address is PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>",
                missing.join(" and ")
            ),
        );
        return;
    };
    let shown = t.webhook_destination_shown();
    let scrub = |e: KommoError| {
        let text = e.to_string();
        match &t.webhook_secret {
            Some(secret) => text.replace(secret.as_str(), "***"),
            None => text,
        }
    };
    let existing = match find_hook(kommo, &destination).await {
        Ok(hook) => hook,
        Err(e) => {
            out.step(
                WHAT,
                StepStatus::Failed,
                format!(
                    "GET /api/v4/webhooks failed: {} (the token needs administrator rights)",
                    scrub(e)
                ),
            );
            return;
        }
    };
    let mut events: BTreeSet<String> = WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect();
    let action = match &existing {
        None => format!("register {shown} for {}", WEBHOOK_EVENTS.join(", ")),
        Some(hook) if hook.disabled => {
            format!("re-enable {shown} (Kommo disabled it): remove it and register it again")
        }
        Some(hook) => {
            let missing: Vec<&str> = WEBHOOK_EVENTS
                .iter()
                .copied()
                .filter(|e| !hook.settings.iter().any(|s| s == e))
                .collect();
            if missing.is_empty() {
                out.step(
                    WHAT,
                    StepStatus::Unchanged,
                    format!("{shown}, enabled, events {}", hook.settings.join(", ")),
                );
                return;
            }
            events.extend(hook.settings.iter().cloned());
            format!("add events {} to {shown}", missing.join(", "))
        }
    };
    if dry_run {
        out.step(WHAT, StepStatus::WouldDo, format!("would {action}"));
        return;
    }
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    let result = async {
        if existing.as_ref().is_some_and(|h| h.disabled) {
            kommo.unsubscribe_webhook(&destination).await?;
        }
        kommo.subscribe_webhook(&destination, &events).await?;
        find_hook(kommo, &destination).await
    }
    .await;
    match result {
        Ok(Some(hook)) if !hook.disabled => {
            out.step(WHAT, StepStatus::Done, format!("{action}: done"))
        }
        Ok(Some(_)) => out.step(
            WHAT,
            StepStatus::Failed,
            format!(
                "{shown} is still disabled: enable it in Kommo, Settings › Integrations › Web hooks"
            ),
        ),
        Ok(None) => out.step(
            WHAT,
            StepStatus::Failed,
            format!("Kommo accepted {shown} but does not list it"),
        ),
        Err(e) => out.step(
            WHAT,
            StepStatus::Failed,
            format!("could not {action}: {}", scrub(e)),
        ),
    }
}

async fn find_hook(
    kommo: &KommoClient,
    destination: &str,
) -> Result<Option<Subscription>, KommoError> {
    Ok(kommo
        .webhooks(Some(destination))
        .await?
        .into_iter()
        .find(|h| h.destination == destination))
}

fn salesbot(t: &Target, field: Option<u64>, out: &mut Setup) {
    const WHAT: &str = "Salesbot";
    let field_ref = field.map_or("<KOMMO_REPLY_FIELD_ID>".to_owned(), |f| f.to_string());
    match t.reply_bot_id {
        Some(bot) => out.step(
            WHAT,
            StepStatus::Unchanged,
            format!(
                "KOMMO_REPLY_BOT_ID={bot}; Kommo's API lists no Salesbots, so check by hand that its one step sends {{{{lead.cf.{field_ref}}}}}"
            ),
        ),
        None => out.step(
            WHAT,
            StepStatus::ToDo,
            format!(
                "create it once in Kommo: Settings › Chats and messengers › Salesbot › Create a bot, one step \
                 \"Send message\" whose text is {{{{lead.cf.{field_ref}}}}} (or paste this code: {}); \
                 then set KOMMO_REPLY_BOT_ID to its id (docs/kommo-setup.md, *The Salesbot*)",
                Target::salesbot_code(field.unwrap_or(0)).replace("lead.cf.0", &format!("lead.cf.{field_ref}"))
            ),
        ),
    }
}
