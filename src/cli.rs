//! The binary's subcommands beside serving: `conversa setup kommo`, `conversa check` and
//! `conversa dead-letters`.
//!
//! They read the same settings as the service (environment, `.env`, flags), never prompt (a
//! script can run them) and print plain text for a person (`--json` for a program). The work
//! itself is [`crate::golive`]'s, or the running service's (`dead-letters` asks it over HTTP
//! with `API_KEY`: the store may be the embedded one, which only the service opens); this file
//! parses, connects and prints.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::golive::setup_kommo::StepStatus;
use crate::golive::{self, CheckStatus, Report, Target};
use crate::kommo::client::KommoClient;

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Make an outside system ready for conversa (the Kommo account).
    Setup {
        #[command(subcommand)]
        system: SetupSystem,
    },
    /// Would a customer writing now be answered? Checks the settings, then Kommo (token,
    /// webhook, reply field), n8n (the workflow is active) and PUBLIC_URL. Exit code 0 only
    /// when no check failed.
    Check(CheckArgs),
    /// List, replay or drop what the running service could not act on (its GET/POST/DELETE
    /// /dead-letters, with API_KEY).
    DeadLetters(DeadLettersArgs),
}

#[derive(Clone, Debug, Args)]
pub struct DeadLettersArgs {
    /// The running service (default: http://127.0.0.1:<PORT>).
    #[arg(long, env = "CONVERSA_URL")]
    pub url: Option<String>,
    #[command(subcommand)]
    pub action: DeadLetterAction,
}

#[derive(Clone, Debug, Subcommand)]
pub enum DeadLetterAction {
    /// The records kept, newest first.
    List {
        /// Only this contact's.
        #[arg(long)]
        contact: Option<u64>,
        /// Only this kind (webhook_item, dispatch_message, deliver_reply, add_note...).
        #[arg(long)]
        kind: Option<String>,
        /// Only those at least this many minutes old.
        #[arg(long)]
        min_age_minutes: Option<u64>,
        /// Print the service's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Run one again under a new id (refused while a seller holds its conversation).
    Replay { id: String },
    /// Give up on one for good.
    Drop { id: String },
}

#[derive(Clone, Debug, Subcommand)]
pub enum SetupSystem {
    /// Checks the token, finds or creates the reply field, registers (or repairs) the webhook
    /// to PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>, and prints the Salesbot step and a
    /// checklist. Idempotent.
    Kommo(SetupKommoArgs),
}

#[derive(Clone, Debug, Args)]
pub struct SetupKommoArgs {
    /// Change nothing: print what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// Write the ids found (KOMMO_REPLY_FIELD_ID, KOMMO_ACCOUNT_ID, KOMMO_SUBDOMAIN) into this
    /// env file, `.env` when no file is given; other lines are kept.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = ".env")]
    pub write_env: Option<PathBuf>,
}

#[derive(Clone, Debug, Args)]
pub struct CheckArgs {
    /// The settings only: no network.
    #[arg(long)]
    pub offline: bool,
    /// Print the report as JSON (the shape of `/ready`'s `go_live`).
    #[arg(long)]
    pub json: bool,
}

/// Runs a subcommand to its exit code.
pub async fn run(command: Command, config: Config) -> ExitCode {
    match command {
        Command::Setup {
            system: SetupSystem::Kommo(args),
        } => setup_kommo(&config, args).await,
        Command::Check(args) => check(&config, args).await,
        Command::DeadLetters(args) => dead_letters(&config, args).await,
    }
}

async fn dead_letters(config: &Config, args: DeadLettersArgs) -> ExitCode {
    let base = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", config.port));
    let base = base.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let with_key = |r: reqwest::RequestBuilder| match config.api_key.as_deref() {
        Some(key) if !key.is_empty() => r.bearer_auth(key),
        _ => r,
    };
    let (request, json) = match &args.action {
        DeadLetterAction::List {
            contact,
            kind,
            min_age_minutes,
            json,
        } => {
            let mut query: Vec<(&str, String)> = vec![("limit", "500".into())];
            if let Some(c) = contact {
                query.push(("contact_id", c.to_string()));
            }
            if let Some(k) = kind {
                query.push(("kind", k.clone()));
            }
            if let Some(m) = min_age_minutes {
                query.push(("min_age_minutes", m.to_string()));
            }
            (
                client.get(format!("{base}/dead-letters")).query(&query),
                *json,
            )
        }
        DeadLetterAction::Replay { id } => (
            client.post(format!(
                "{base}/dead-letters/{}/replay",
                percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
            )),
            false,
        ),
        DeadLetterAction::Drop { id } => (
            client.delete(format!(
                "{base}/dead-letters/{}",
                percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
            )),
            false,
        ),
    };
    let shown = crate::redact::url(base);
    let answer = match with_key(request).send().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "conversa dead-letters: cannot reach the service at {shown}: {}",
                crate::redact::client_error(e)
            );
            return ExitCode::from(2);
        }
    };
    let status = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap_or_default();
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or("no message");
        eprintln!("conversa dead-letters: {status}: {message}");
        return ExitCode::FAILURE;
    }
    if json {
        println!("{body:#}");
        return ExitCode::SUCCESS;
    }
    match &args.action {
        DeadLetterAction::List { .. } => {
            let list = body["dead_letters"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("No dead letters.");
            }
            for d in &list {
                let contact = d["contact_id"]
                    .as_u64()
                    .map_or(String::new(), |c| format!(" contact {c}"));
                println!(
                    "{}  {}{}  {}  {}",
                    d["id"].as_str().unwrap_or(""),
                    d["kind"].as_str().unwrap_or(""),
                    contact,
                    age(d["at"].as_u64().unwrap_or(0)),
                    d["error"].as_str().unwrap_or("")
                );
            }
        }
        DeadLetterAction::Replay { id } => println!(
            "Replayed {id} as {} (contact {}).",
            body["replayed_as"].as_str().unwrap_or("?"),
            body["contact_id"]
        ),
        DeadLetterAction::Drop { id } => println!("Dropped {id}."),
    }
    ExitCode::SUCCESS
}

/// `12 min ago`, `3 h ago` of a Unix-millisecond time.
fn age(at: u64) -> String {
    let minutes = conversa_actors::clock::now_millis().saturating_sub(at) / 60_000;
    match minutes {
        m if m < 120 => format!("{m} min ago"),
        m => format!("{} h ago", m / 60),
    }
}

async fn setup_kommo(config: &Config, args: SetupKommoArgs) -> ExitCode {
    let target = Target::from_config(config);
    let connection = match Connection::open(config).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            eprintln!(
                "conversa setup kommo: KOMMO_API_URL and a credential (KOMMO_ACCESS_TOKEN, or KOMMO_CLIENT_ID + KOMMO_CLIENT_SECRET) are needed"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("conversa setup kommo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "conversa setup kommo{}: {}",
        if args.dry_run {
            " --dry-run (nothing is changed)"
        } else {
            ""
        },
        crate::redact::url(target.kommo_api_url.as_deref().unwrap_or(""))
    );
    if let Some(note) = &connection.note {
        println!("  note: {note}");
    }
    let setup = golive::setup_kommo::run(&target, &connection.kommo, args.dry_run).await;
    connection.close();
    for step in &setup.steps {
        println!(
            "  [{:<9}] {}: {}",
            step.status.label(),
            step.what,
            step.detail
        );
    }
    println!(
        "\nChecklist: {} done, {} already right, {} would be done, {} to do by hand, {} failed",
        setup.count(StepStatus::Done),
        setup.count(StepStatus::Unchanged),
        setup.count(StepStatus::WouldDo),
        setup.count(StepStatus::ToDo),
        setup.count(StepStatus::Failed)
    );
    if !setup.env.is_empty() {
        let line: Vec<String> = setup.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match &args.write_env {
            Some(path) if !args.dry_run => match golive::env_file::update(path, &setup.env) {
                Ok(()) => println!("Wrote to {}: {}", path.display(), line.join(" ")),
                Err(e) => {
                    eprintln!("conversa setup kommo: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            },
            Some(path) => println!(
                "Settings found (--dry-run: {} left as it was): {}",
                path.display(),
                line.join(" ")
            ),
            None => println!(
                "Settings found (put them in .env, or run again with --write-env): {}",
                line.join(" ")
            ),
        }
    }
    println!("Then: `conversa check` says whether a customer would be answered.");
    if setup.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn check(config: &Config, args: CheckArgs) -> ExitCode {
    let target = Target::from_config(config);
    let mut checks = configuration_checks(config);
    checks.extend(golive::checks::offline(&target));
    let mut note = None;
    let report = if args.offline {
        Report::new(checks)
    } else {
        let connection = match Connection::open(config).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("conversa check: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let kommo = connection.as_ref().map(|c| c.kommo.clone());
        checks.extend(golive::checks::online(&target, kommo.as_deref(), &http).await);
        if let Some(c) = connection {
            note = c.note.clone();
            c.close();
        }
        Report::new(checks)
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        );
    } else {
        print_report(&report, args.offline, note.as_deref());
    }
    if report.customers_answered {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What the service itself would refuse to start with, as checks.
fn configuration_checks(config: &Config) -> Vec<golive::Check> {
    let mut out = Vec::new();
    let mut refuse = |name: &str, result: anyhow::Result<()>| {
        if let Err(e) = result {
            out.push(golive::Check {
                name: name.to_owned(),
                status: CheckStatus::Fail,
                detail: format!("{e:#}"),
                fix: None,
            });
        }
    };
    refuse("HOST", config.listen_addr().map(|_| ()));
    refuse("HOST", config.check_exposure());
    refuse("REPLY_CHANNEL", config.check_consistency());
    refuse("FICTITIOUS_SELLERS", config.fictitious().map(|_| ()));
    refuse("SELLER_WHATSAPP", config.seller_whatsapp().map(|_| ()));
    out
}

fn print_report(report: &Report, offline: bool, note: Option<&str>) {
    println!("conversa check: would a customer writing now be answered?");
    if let Some(note) = note {
        println!("  note: {note}");
    }
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        let mark = match c.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
        };
        println!("  {mark}  {:<width$}  {}", c.name, c.detail);
        if let Some(fix) = &c.fix
            && c.status != CheckStatus::Ok
        {
            println!("        {:<width$}  fix: {fix}", "");
        }
    }
    let failed: Vec<&str> = report.failed().map(|c| c.name.as_str()).collect();
    if failed.is_empty() {
        println!(
            "\nYes{}.",
            if offline {
                " as far as the settings go (--offline: Kommo, n8n and PUBLIC_URL not asked)"
            } else {
                ": every check passed"
            }
        );
    } else {
        println!("\nNo: {} failed ({}).", failed.len(), failed.join(", "));
    }
}

/// The Kommo client of a subcommand, over the service's own token store.
struct Connection {
    kommo: Arc<KommoClient>,
    /// Said to the user when the tokens do not come from the service's store.
    note: Option<String>,
    /// A throwaway store directory to remove at the end.
    scratch: Option<PathBuf>,
}

impl Connection {
    /// `None` when Kommo is not configured. The tokens live in the store (the service may have
    /// rotated them since the environment was written). When the service holds the embedded
    /// store, the environment's token is used alone, without its refresh token: a refresh
    /// would spend the single-use refresh token the running service still holds.
    async fn open(config: &Config) -> anyhow::Result<Option<Connection>> {
        if config
            .kommo_api_url
            .as_deref()
            .is_none_or(|u| u.trim().is_empty())
        {
            return Ok(None);
        }
        match crate::setup::open_store(config).await {
            Ok(store) => Ok(crate::setup::connect_kommo(config, store)
                .await?
                .map(|kommo| Connection {
                    kommo,
                    note: None,
                    scratch: None,
                })),
            Err(e) if config.redis_topology().is_none() && e.to_string().contains("in use") => {
                let scratch = std::env::temp_dir().join(format!(
                    "conversa-cli-{}-{}",
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ));
                let mut alone = config.clone();
                alone.data_dir = scratch.clone();
                alone.kommo_refresh_token = None;
                let store = crate::setup::open_store(&alone).await?;
                let kommo = crate::setup::connect_kommo(&alone, store).await?;
                Ok(kommo.map(|kommo| Connection {
                    kommo,
                    note: Some(format!(
                        "{} is in use by the running service: KOMMO_ACCESS_TOKEN from the environment is used as it is",
                        config.data_dir.display()
                    )),
                    scratch: Some(scratch),
                }))
            }
            Err(e) => Err(anyhow::anyhow!(e).context(match config.redis_topology() {
                Some(_) => "cannot reach Redis, where the Kommo tokens are kept".to_owned(),
                None => format!(
                    "cannot open the embedded store in {}",
                    config.data_dir.display()
                ),
            })),
        }
    }

    fn close(self) {
        if let Some(dir) = &self.scratch {
            drop(self.kommo);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
