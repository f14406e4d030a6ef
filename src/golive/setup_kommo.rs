//! `conversa setup kommo`: makes a Kommo account ready to answer customers, as far as the API
//! allows, and says exactly what is left to do by hand.
//!
//! 1. the token works (`GET /api/v4/account`): the account's id and subdomain are noted;
//! 2. the lead text field replies are written into exists (`KOMMO_REPLY_FIELD_ID`, else the one
//!    with code [`REPLY_FIELD_CODE`], else created);
//! 3. a webhook to `PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>` exists, is enabled and carries
//!    every event conversa uses (created, completed, or — when Kommo disabled it — removed and
//!    registered again: [`super::webhook`]);
//! 4. the Salesbot cannot be created or listed through the API: its one step is printed.
//!
//! Idempotent: a second run on a ready account changes nothing. `dry_run` reads only and says
//! what it would do. Nothing is prompted, so a script can run it.

use super::target::{REPLY_FIELD_CODE, REPLY_FIELD_KIND, REPLY_FIELD_NAME, TEXT_KINDS, Target};
use super::webhook::{self, Standing};
use crate::kommo::admin::LeadField;
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
    if t.kommo_subdomain.as_deref() != Some(account.subdomain.as_str()) {
        out.env("KOMMO_SUBDOMAIN", &account.subdomain);
    }

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
    let ours: Vec<&LeadField> = fields
        .iter()
        .filter(|f| {
            TEXT_KINDS.contains(&f.kind.as_str())
                && (f.code.as_deref() == Some(REPLY_FIELD_CODE) || f.name == REPLY_FIELD_NAME)
        })
        .collect();
    if ours.len() > 1 {
        let ids: Vec<String> = ours[1..].iter().map(|f| f.id.to_string()).collect();
        note.push_str(&format!(
            "; {} more such fields ({}): delete them in Kommo",
            ids.len(),
            ids.join(", ")
        ));
    }
    if let Some(f) = ours.first() {
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
    let mut problems = Vec::new();
    match (&t.public_url, t.public_url_problem()) {
        (None, _) => problems.push("PUBLIC_URL is unset".to_owned()),
        (Some(_), Some(problem)) => problems.push(format!("PUBLIC_URL {problem}")),
        _ => {}
    }
    match &t.webhook_secret {
        None => problems.push("WEBHOOK_SECRET is unset".to_owned()),
        Some(s) if s.chars().count() < crate::config::MIN_SECRET_CHARS => problems.push(format!(
            "WEBHOOK_SECRET is shorter than {} characters",
            crate::config::MIN_SECRET_CHARS
        )),
        _ => {}
    }
    let destination = match t.webhook_destination() {
        Some(d) if problems.is_empty() => d,
        _ => {
            out.step(
                WHAT,
                StepStatus::Failed,
                format!(
                    "{}: the webhook address is PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>",
                    problems.join("; ")
                ),
            );
            return;
        }
    };
    let shown = t.webhook_destination_shown();
    let scrub = |e: KommoError| t.scrub(&e.to_string());
    let standing = match webhook::standing(kommo, &destination).await {
        Ok(standing) => standing,
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
    others(kommo, &destination, out).await;
    if let Standing::Right(hook) = &standing {
        out.step(
            WHAT,
            StepStatus::Unchanged,
            format!("{shown}, enabled, events {}", hook.settings.join(", ")),
        );
        return;
    }
    let action = webhook::plan(&standing, &shown);
    if dry_run {
        out.step(WHAT, StepStatus::WouldDo, format!("would {action}"));
        return;
    }
    match webhook::repair(kommo, &destination, &standing).await {
        Ok(_) => out.step(WHAT, StepStatus::Done, format!("{action}: done")),
        Err(e) => out.step(
            WHAT,
            StepStatus::Failed,
            format!(
                "could not {action}: {} (enable it by hand in Kommo, Settings › Integrations › Web hooks)",
                scrub(e)
            ),
        ),
    }
}

/// Other conversa webhooks of the account (an older `PUBLIC_URL` or `WEBHOOK_SECRET`): Kommo
/// keeps calling them; removing one is left to a human, who knows whether it is still in use.
async fn others(kommo: &KommoClient, destination: &str, out: &mut Setup) {
    let Ok(all) = kommo.webhooks(None).await else {
        return;
    };
    for hook in all {
        if hook.destination != destination && hook.destination.contains("/webhooks/kommo/") {
            let base = hook
                .destination
                .split("/webhooks/kommo/")
                .next()
                .unwrap_or("");
            out.step(
                "old webhook",
                StepStatus::ToDo,
                format!(
                    "{}/webhooks/kommo/*** (another secret or address) is registered too: remove it in Kommo, Settings › Integrations › Web hooks, if nothing uses it",
                    crate::redact::url(base).trim_end_matches('/')
                ),
            );
        }
    }
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
                 then set KOMMO_REPLY_BOT_ID to its id (docs/getting-started-kommo.md, section 4)",
                Target::salesbot_code(field.unwrap_or(0)).replace("lead.cf.0", &format!("lead.cf.{field_ref}"))
            ),
        ),
    }
}
