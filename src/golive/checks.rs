//! Would a customer be answered? Each condition as one [`Check`], named after the variable or
//! the remote object at fault, with the fix when there is one.
//!
//! [`offline`] reads only the settings; [`online`] asks Kommo (token, webhook, reply field), n8n
//! (is the workflow's production webhook live?) and `PUBLIC_URL` (does this service answer
//! there?). `conversa check` prints both and exits 0 only when none failed; `/ready` carries the
//! same [`Report`] (a round at most once a minute: Kommo allows 7 requests a second in all;
//! [`Watch`]).

use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;

use super::target::{TEXT_KINDS, Target};
use super::webhook::{self, Standing};
use crate::config::MIN_SECRET_CHARS;
use crate::kommo::client::KommoClient;
use crate::reply::Strategy;

/// How a condition stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    /// Works, but not as it should in production (e.g. dispatches not signed).
    Warn,
    /// A customer would not be answered until this is fixed.
    Fail,
}

/// One condition.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Check {
    /// The variable (`KOMMO_REPLY_BOT_ID`) or the remote object (`kommo.webhook`) checked.
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &str, status: CheckStatus, detail: impl Into<String>) -> Self {
        Check {
            name: name.to_owned(),
            status,
            detail: detail.into(),
            fix: None,
        }
    }
    fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Ok, detail)
    }
    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Warn, detail).with_fix(fix)
    }
    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, CheckStatus::Fail, detail).with_fix(fix)
    }
    fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Every condition and the verdict.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Report {
    /// No check failed (and Kommo, n8n and `PUBLIC_URL` were asked): a customer writing now
    /// would be answered.
    pub customers_answered: bool,
    /// When Kommo, n8n and `PUBLIC_URL` were last asked (Unix seconds); `null`: not yet, only
    /// the settings are checked.
    pub checked_online_at: Option<u64>,
    pub checks: Vec<Check>,
}

impl Report {
    /// A report of offline and online checks.
    pub fn new(checks: Vec<Check>) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Report {
            customers_answered: checks.iter().all(|c| c.status != CheckStatus::Fail),
            checked_online_at: Some(now),
            checks,
        }
    }

    /// A report of the settings alone: it cannot say customers are answered.
    pub fn offline_only(checks: Vec<Check>) -> Self {
        Report {
            customers_answered: false,
            checked_online_at: None,
            checks,
        }
    }

    /// The failed checks' names.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == CheckStatus::Fail)
    }
}

const SETUP: &str = "run `conversa setup kommo` (docs/getting-started-kommo.md)";

/// The settings alone.
pub fn offline(t: &Target) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &t.kommo_api_url {
        Some(url) if !url.trim_end_matches('/').ends_with("/api/v4") => Check::fail(
            "KOMMO_API_URL",
            format!("{} does not end in /api/v4/", crate::redact::url(url)),
            "set KOMMO_API_URL=https://<subdomain>.kommo.com/api/v4/",
        ),
        Some(url) => Check::ok("KOMMO_API_URL", crate::redact::url(url)),
        None => Check::fail(
            "KOMMO_API_URL",
            "unset: conversa cannot reach Kommo (replies wait in the outbox)",
            "set KOMMO_API_URL=https://<subdomain>.kommo.com/api/v4/",
        ),
    });
    out.push(if t.kommo_credentials {
        Check::ok("KOMMO_ACCESS_TOKEN", "a token or an OAuth client is configured")
    } else {
        Check::fail(
            "KOMMO_ACCESS_TOKEN",
            "no Kommo credential: neither KOMMO_ACCESS_TOKEN nor KOMMO_CLIENT_ID + KOMMO_CLIENT_SECRET",
            "create a private integration in Kommo and set its long-lived token as KOMMO_ACCESS_TOKEN",
        )
    });
    out.push(match &t.webhook_secret {
        Some(s) if s.chars().count() >= MIN_SECRET_CHARS => {
            Check::ok("WEBHOOK_SECRET", "set (the webhook address carries it)")
        }
        Some(_) => Check::fail(
            "WEBHOOK_SECRET",
            format!("shorter than {MIN_SECRET_CHARS} characters"),
            "set WEBHOOK_SECRET=$(openssl rand -hex 24)",
        ),
        None => Check::fail(
            "WEBHOOK_SECRET",
            "unset: anyone could post webhooks, and `setup kommo` has no address to register",
            "set WEBHOOK_SECRET=$(openssl rand -hex 24)",
        ),
    });
    out.push(match &t.public_url {
        Some(url) if t.public_url_problem().is_some() => Check::fail(
            "PUBLIC_URL",
            format!(
                "{} {}",
                crate::redact::url(url),
                t.public_url_problem().unwrap_or_default()
            ),
            "set PUBLIC_URL to the public base address of this service, e.g. https://conversa.example.com",
        ),
        Some(url) if url.starts_with("https://") => Check::ok("PUBLIC_URL", url.clone()),
        Some(url) => Check::warn(
            "PUBLIC_URL",
            format!(
                "{url} is not https: Kommo and n8n on the internet need a public https address"
            ),
            "put conversa behind the compose file's Caddy profile (docs/getting-started-kommo.md, section 5)",
        ),
        None => Check::fail(
            "PUBLIC_URL",
            "unset: Kommo has no address to send webhooks to, n8n none to call back",
            "set PUBLIC_URL to this service's public https address",
        ),
    });
    out.push(match &t.n8n_webhook_url {
        Some(url) if url.contains("/webhook-test/") => Check::fail(
            "N8N_WEBHOOK_URL",
            format!(
                "{} is the test URL: it answers only while the editor listens",
                crate::redact::url(url)
            ),
            "use the production URL (/webhook/...) of the active workflow",
        ),
        Some(url) => Check::ok("N8N_WEBHOOK_URL", crate::redact::url(url)),
        None => Check::fail(
            "N8N_WEBHOOK_URL",
            "unset: no AI workflow writes the replies (dispatches wait in the outbox)",
            "import examples/n8n/ai-agent.json into n8n, activate it, set its production webhook URL (docs/ai-workflow.md)",
        ),
    });
    if !t.n8n_shared_secret {
        out.push(Check::warn(
            "N8N_SHARED_SECRET",
            "unset: dispatches are not signed, the workflow cannot tell conversa's calls from anyone's",
            "set N8N_SHARED_SECRET and the same value in the workflow's `conversa shared secret` credential (docs/ai-workflow.md)",
        ));
    }
    out.push(match t.reply_channel {
        Some(Strategy::Salesbot) => Check::ok("REPLY_CHANNEL", "salesbot: replies reach WhatsApp"),
        Some(Strategy::Note) => Check::fail(
            "REPLY_CHANNEL",
            "note: replies are written as notes on the lead, customers never see them",
            format!("{SETUP}, then set KOMMO_REPLY_FIELD_ID and KOMMO_REPLY_BOT_ID"),
        ),
        None => Check::fail(
            "REPLY_CHANNEL",
            "no reply channel without Kommo",
            "set KOMMO_API_URL",
        ),
    });
    let bot =
        "create the Salesbot by hand and set its id (docs/getting-started-kommo.md, section 4)";
    for (name, value, fix) in [
        ("KOMMO_REPLY_FIELD_ID", t.reply_field_id, SETUP),
        ("KOMMO_REPLY_BOT_ID", t.reply_bot_id, bot),
    ] {
        out.push(match value {
            Some(0) => Check::fail(name, "0 is not a Kommo id", fix),
            Some(id) => Check::ok(name, id.to_string()),
            None => Check::fail(name, "unset", fix),
        });
    }
    if !t.api_key {
        out.push(Check::warn(
            "API_KEY",
            "unset: the operator endpoints answer anyone who reaches them",
            "set API_KEY=$(openssl rand -hex 24)",
        ));
    }
    out
}

/// Asks Kommo, n8n and `PUBLIC_URL`. Checks whose settings are missing are left out (the
/// offline ones already say so).
pub async fn online(t: &Target, kommo: Option<&KommoClient>, http: &reqwest::Client) -> Vec<Check> {
    let mut out = Vec::new();
    if let Some(kommo) = kommo {
        out.push(account(t, kommo).await);
        if let Some(destination) = t.webhook_destination() {
            out.push(webhook(t, kommo, &destination).await);
        }
        if let Some(field) = t.reply_field_id {
            out.push(reply_field(kommo, field).await);
        }
        if let (Some(bot), Some(field)) = (t.reply_bot_id, t.reply_field_id) {
            out.push(Check::ok(
                "kommo.reply_bot",
                format!(
                    "Salesbot {bot}: Kommo's API lists no Salesbots, so check by hand that its one step sends {{{{lead.cf.{field}}}}}"
                ),
            ));
        }
    }
    if let Some(url) = &t.n8n_webhook_url {
        out.push(n8n_workflow(http, url).await);
    }
    if let Some(url) = t
        .public_url
        .as_ref()
        .filter(|_| t.public_url_problem().is_none())
    {
        out.push(public_url(http, url).await);
    }
    // No secret reaches an answer: the webhook address carries WEBHOOK_SECRET.
    if let Some(secret) = &t.webhook_secret {
        for check in &mut out {
            check.detail = check.detail.replace(secret.as_str(), "***");
        }
    }
    out
}

/// The offline and the online checks together.
pub async fn all(t: &Target, kommo: Option<&KommoClient>, http: &reqwest::Client) -> Report {
    let mut checks = offline(t);
    checks.extend(online(t, kommo, http).await);
    Report::new(checks)
}

async fn account(t: &Target, kommo: &KommoClient) -> Check {
    match kommo.account().await {
        Ok(a) if t.kommo_account_id != 0 && a.id != t.kommo_account_id => Check::fail(
            "kommo.account",
            format!(
                "the token belongs to account {} ({}), KOMMO_ACCOUNT_ID says {}",
                a.id, a.subdomain, t.kommo_account_id
            ),
            format!("set KOMMO_ACCOUNT_ID={} or use that account's token", a.id),
        ),
        Ok(a) => Check::ok(
            "kommo.account",
            format!(
                "the token works: account {} ({}, {})",
                a.name, a.id, a.subdomain
            ),
        ),
        Err(e) => Check::fail(
            "kommo.account",
            format!("GET /api/v4/account failed: {e}"),
            "check KOMMO_API_URL and KOMMO_ACCESS_TOKEN (a long-lived token may have expired)",
        ),
    }
}

async fn webhook(t: &Target, kommo: &KommoClient, destination: &str) -> Check {
    let shown = t.webhook_destination_shown();
    match webhook::standing(kommo, destination).await {
        Ok(Standing::Right(hook)) => Check::ok(
            "kommo.webhook",
            format!("{shown}, enabled, events {}", hook.settings.join(", ")),
        ),
        Ok(Standing::Missing) => Check::fail(
            "kommo.webhook",
            format!("no webhook to {shown}: Kommo sends conversa nothing"),
            SETUP,
        ),
        Ok(Standing::Disabled(_)) => Check::fail(
            "kommo.webhook",
            format!(
                "the webhook to {shown} is disabled (Kommo turns a hook off after 100 invalid answers in 2 hours)"
            ),
            SETUP,
        ),
        Ok(Standing::Incomplete(_, missing)) => Check::fail(
            "kommo.webhook",
            format!(
                "the webhook to {shown} misses events {}",
                missing.join(", ")
            ),
            SETUP,
        ),
        Err(e) => Check::fail(
            "kommo.webhook",
            format!("GET /api/v4/webhooks failed: {e}"),
            "the token needs administrator rights",
        ),
    }
}

async fn reply_field(kommo: &KommoClient, id: u64) -> Check {
    match kommo.lead_fields().await {
        Ok(fields) => match fields.iter().find(|f| f.id == id) {
            Some(f) if TEXT_KINDS.contains(&f.kind.as_str()) => Check::ok(
                "kommo.reply_field",
                format!("lead field {id} \"{}\" ({})", f.name, f.kind),
            ),
            Some(f) => Check::fail(
                "kommo.reply_field",
                format!(
                    "lead field {id} \"{}\" is a {} field, not text",
                    f.name, f.kind
                ),
                SETUP,
            ),
            None => Check::fail(
                "kommo.reply_field",
                format!("the account has no lead field {id} (KOMMO_REPLY_FIELD_ID)"),
                SETUP,
            ),
        },
        Err(e) => Check::fail(
            "kommo.reply_field",
            format!("GET /api/v4/leads/custom_fields failed: {e}"),
            "check the Kommo token",
        ),
    }
}

/// A GET to a POST-only production webhook answers 404 "… Did you mean to make a POST
/// request?" when the workflow is active, and 404 "… is not registered." when it is not.
async fn n8n_workflow(http: &reqwest::Client, url: &str) -> Check {
    let shown = crate::redact::url(url);
    let answer = http.get(url).timeout(Duration::from_secs(5)).send().await;
    match answer {
        Err(e) => Check::fail(
            "n8n.workflow",
            format!(
                "n8n does not answer at {shown}: {}",
                crate::redact::client_error(e)
            ),
            "start n8n; N8N_WEBHOOK_URL must be reachable from conversa",
        ),
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if status == 404 && body.contains("Did you mean to make a POST request") {
                Check::ok("n8n.workflow", format!("{shown}: the workflow is active"))
            } else if (200..300).contains(&status) {
                Check::fail(
                    "n8n.workflow",
                    format!(
                        "{shown} answered {status} to a GET: not the production webhook (POST) of an n8n workflow"
                    ),
                    "set N8N_WEBHOOK_URL to the production URL of the Webhook node (http://n8n:5678/webhook/conversa)",
                )
            } else if status == 404 {
                Check::fail(
                    "n8n.workflow",
                    format!("{shown}: n8n has no active workflow at this address (404)"),
                    "activate the workflow in n8n (and use its production URL, /webhook/..., not /webhook-test/...)",
                )
            } else {
                Check::fail(
                    "n8n.workflow",
                    format!("{shown}: n8n answered {status}"),
                    "look at n8n's log",
                )
            }
        }
    }
}

async fn public_url(http: &reqwest::Client, base: &str) -> Check {
    let url = format!("{}/health", base.trim_end_matches('/'));
    let shown = crate::redact::url(&url);
    let answer = http.get(&url).timeout(Duration::from_secs(5)).send().await;
    let fix = "PUBLIC_URL must reach this service from outside (DNS, proxy, firewall)";
    match answer {
        Ok(r) if r.status().is_success() => {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            if body.get("status").and_then(|s| s.as_str()) == Some("ok") {
                Check::ok("PUBLIC_URL.reachable", format!("{shown} answers"))
            } else {
                Check::fail(
                    "PUBLIC_URL.reachable",
                    format!("{shown} answers, but not as conversa"),
                    fix,
                )
            }
        }
        Ok(r) => Check::fail(
            "PUBLIC_URL.reachable",
            format!("{shown} answered {}", r.status().as_u16()),
            fix,
        ),
        Err(e) => Check::fail(
            "PUBLIC_URL.reachable",
            format!(
                "{shown} does not answer: {}",
                crate::redact::client_error(e)
            ),
            fix,
        ),
    }
}

/// How long `/ready`'s online checks stand: each round costs Kommo three requests.
pub const FRESH: Duration = Duration::from_secs(60);

/// How long a caller waits for a round it started (or found running) before taking the last
/// report: a monitor polling every few minutes gets a fresh answer, and `/ready` stays within a
/// health probe's 3 s.
pub const ROUND_WAIT: Duration = Duration::from_millis(1500);

/// The report `/ready` serves. A round runs at most once per [`FRESH`] whatever the number of
/// callers; a caller that finds the report stale starts one and waits for it up to
/// [`ROUND_WAIT`], then serves the last report (the round finishes in the background).
pub struct Watch {
    target: Target,
    last: std::sync::Mutex<Option<(std::time::Instant, Report)>>,
    refreshing: std::sync::atomic::AtomicBool,
    done: tokio::sync::Notify,
}

impl Watch {
    pub fn new(target: Target) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Watch {
            target,
            last: std::sync::Mutex::new(None),
            refreshing: Default::default(),
            done: tokio::sync::Notify::new(),
        })
    }

    fn last(&self) -> Option<(std::time::Instant, Report)> {
        self.last.lock().unwrap().clone()
    }

    /// The current report (the settings alone while the first round has not ended).
    pub async fn current(
        self: &std::sync::Arc<Self>,
        kommo: Option<std::sync::Arc<KommoClient>>,
        http: &reqwest::Client,
    ) -> Report {
        use std::sync::atomic::Ordering;
        let stale = self.last().is_none_or(|(at, _)| at.elapsed() >= FRESH);
        if stale {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.refreshing.swap(true, Ordering::AcqRel) {
                let watch = self.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    let report = all(&watch.target, kommo.as_deref(), &http).await;
                    *watch.last.lock().unwrap() = Some((std::time::Instant::now(), report));
                    watch.refreshing.store(false, Ordering::Release);
                    watch.done.notify_waiters();
                });
            }
            let _ = tokio::time::timeout(ROUND_WAIT, done).await;
        }
        self.last()
            .map(|(_, r)| r)
            .unwrap_or_else(|| Report::offline_only(offline(&self.target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Target {
        Target {
            kommo_api_url: Some("https://conta.kommo.com/api/v4/".into()),
            kommo_credentials: true,
            public_url: Some("https://conversa.example".into()),
            webhook_secret: Some("0123456789abcdef0123".into()),
            n8n_webhook_url: Some("https://n8n.example/webhook/conversa".into()),
            n8n_shared_secret: true,
            api_key: true,
            reply_channel: Some(Strategy::Salesbot),
            reply_field_id: Some(1),
            reply_bot_id: Some(2),
            ..Target::default()
        }
    }

    #[test]
    fn a_complete_configuration_passes_offline() {
        let report = Report::new(offline(&live()));
        assert!(report.customers_answered, "{:?}", report.checks);
        assert!(report.checks.iter().all(|c| c.status == CheckStatus::Ok));
    }

    #[test]
    fn each_missing_setting_fails_under_its_own_name() {
        type Breaks = fn(&mut Target);
        let cases: Vec<(&str, Breaks)> = vec![
            ("KOMMO_API_URL", |t| t.kommo_api_url = None),
            ("KOMMO_ACCESS_TOKEN", |t| t.kommo_credentials = false),
            ("WEBHOOK_SECRET", |t| {
                t.webhook_secret = Some("short".into())
            }),
            ("PUBLIC_URL", |t| t.public_url = None),
            ("N8N_WEBHOOK_URL", |t| t.n8n_webhook_url = None),
            ("REPLY_CHANNEL", |t| t.reply_channel = Some(Strategy::Note)),
            ("KOMMO_REPLY_BOT_ID", |t| t.reply_bot_id = None),
            ("KOMMO_REPLY_BOT_ID", |t| t.reply_bot_id = Some(0)),
            ("KOMMO_API_URL", |t| {
                t.kommo_api_url = Some("https://conta.kommo.com/".into())
            }),
            ("PUBLIC_URL", |t| {
                t.public_url = Some("https://c.example/?x=1".into())
            }),
            ("PUBLIC_URL", |t| t.public_url = Some("not a url".into())),
            ("N8N_WEBHOOK_URL", |t| {
                t.n8n_webhook_url = Some("https://n8n.example/webhook-test/conversa".into())
            }),
        ];
        for (name, breaks) in cases {
            let mut t = live();
            breaks(&mut t);
            let report = Report::new(offline(&t));
            let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
            assert_eq!(failed, [name], "breaking {name}");
            assert!(!report.customers_answered);
        }
    }

    #[test]
    fn http_public_url_and_unsigned_dispatches_warn_without_failing() {
        let mut t = live();
        t.public_url = Some("http://127.0.0.1:8000".into());
        t.n8n_shared_secret = false;
        let report = Report::new(offline(&t));
        assert!(report.customers_answered);
        let warned: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.status == CheckStatus::Warn)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(warned, ["PUBLIC_URL", "N8N_SHARED_SECRET"]);
    }
}
