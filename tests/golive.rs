//! Going live, as a new team would: `conversa setup kommo` against a fresh (fake) Kommo account
//! creates the reply field and the webhook, a second run changes nothing, a broken token exits
//! non-zero naming it; `conversa check` says no until a customer would be answered, names each
//! failure, then says yes; `/ready` carries the same checks. The binary is run as a user runs
//! it, in a directory of its own (no stray `.env`).

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::fake_kommo::{self, FakeKommo};
use support::fake_n8n::FakeN8n;
use support::service::Service;

const SECRET: &str = "s3cr3t-webhook-0123456789";
const PUBLIC: &str = "https://conversa.example";
const EVENTS: &[&str] = &["add_message", "add_talk", "update_talk", "add_unsorted"];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `conversa ARGS` in `dir` with only `env` set (plus PATH). Asynchronously: the fakes
/// answer on this test's runtime.
async fn conversa(dir: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_conversa"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .await
        .expect("run conversa");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn kommo_env(fake: &FakeKommo, dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("KOMMO_API_URL", fake.api_url()),
        (
            "KOMMO_ACCESS_TOKEN",
            fake.issue_long_lived_token(Duration::from_secs(86_400)),
        ),
        ("PUBLIC_URL", PUBLIC.into()),
        ("WEBHOOK_SECRET", SECRET.into()),
        ("DATA_DIR", dir.join("data").display().to_string()),
    ]
}

fn destination(public: &str) -> String {
    format!("{public}/webhooks/kommo/{SECRET}")
}

/// Requests that changed something in the account.
fn writes(fake: &FakeKommo) -> Vec<String> {
    fake.api_requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn setup_kommo_readies_a_fresh_account_and_a_second_run_changes_nothing() {
    let fake = FakeKommo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = kommo_env(&fake, dir.path());
    let run = conversa(dir.path(), &["setup", "kommo", "--write-env"], &env).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);

    let fields = fake.fields();
    assert_eq!(fields.len(), 1, "{fields:?}");
    let field = &fields[0];
    assert_eq!(
        (field.kind.as_str(), field.code.as_deref()),
        ("textarea", Some("CONVERSA_REPLY"))
    );
    let hooks = fake.webhooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].destination, destination(PUBLIC));
    assert!(!hooks[0].disabled);
    for event in EVENTS {
        assert!(hooks[0].settings.iter().any(|s| s == event), "{event}");
    }
    assert!(
        run.stdout
            .contains("[done     ] reply field: created lead field"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("[done     ] webhook: register"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("[to do    ] Salesbot: create it once in Kommo"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("{{{{lead.cf.{}}}}}", field.id))
    );
    assert!(!run.stdout.contains(SECRET), "the secret is never printed");
    let written = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    for line in [
        format!("KOMMO_REPLY_FIELD_ID={}", field.id),
        format!("KOMMO_ACCOUNT_ID={}", fake_kommo::ACCOUNT_ID),
        format!("KOMMO_SUBDOMAIN={}", fake_kommo::SUBDOMAIN),
    ] {
        assert!(written.lines().any(|l| l == line), "{line} in {written}");
    }

    // Again, once with the ids from `.env` (read from the working directory) and once without
    // (the field is found by its code): nothing is written to Kommo.
    let before = writes(&fake).len();
    let again = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert!(
        again.stdout.contains("(KOMMO_REPLY_FIELD_ID)"),
        "{}",
        again.stdout
    );
    std::fs::remove_file(dir.path().join(".env")).unwrap();
    let third = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_eq!(third.code, 0, "{}", third.stdout);
    assert!(
        third.stdout.contains("found lead field"),
        "{}",
        third.stdout
    );
    for out in [&again.stdout, &third.stdout] {
        assert!(out.contains("Checklist: 0 done"), "{out}");
        assert!(out.contains("[unchanged] webhook"), "{out}");
    }
    assert_eq!(writes(&fake).len(), before, "{:?}", writes(&fake));
    assert_eq!((fake.fields().len(), fake.webhooks().len()), (1, 1));
}

#[tokio::test]
async fn dry_run_reads_only() {
    let fake = FakeKommo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = kommo_env(&fake, dir.path());
    let run = conversa(
        dir.path(),
        &["setup", "kommo", "--dry-run", "--write-env"],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("[would do ] reply field: would create"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("[would do ] webhook: would register"),
        "{}",
        run.stdout
    );
    assert!(writes(&fake).is_empty(), "{:?}", writes(&fake));
    assert!(
        !dir.path().join(".env").exists(),
        "--dry-run writes no file"
    );
}

#[tokio::test]
async fn a_broken_token_or_missing_settings_exit_non_zero_naming_the_problem() {
    let fake = FakeKommo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = kommo_env(&fake, dir.path());
    env[1].1 = "not-a-token".into();
    let run = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stdout.contains("[FAILED   ] Kommo token"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("401"), "{}", run.stdout);
    assert!(run.stdout.contains("KOMMO_ACCESS_TOKEN"), "{}", run.stdout);
    assert!(writes(&fake).is_empty());

    let no_kommo = conversa(dir.path(), &["setup", "kommo"], &[]).await;
    assert_eq!(no_kommo.code, 2);
    assert!(
        no_kommo.stderr.contains("KOMMO_API_URL"),
        "{}",
        no_kommo.stderr
    );

    // Without PUBLIC_URL there is no webhook address: that step fails by name, the rest runs.
    let env: Vec<_> = kommo_env(&fake, dir.path())
        .into_iter()
        .filter(|(k, _)| *k != "PUBLIC_URL")
        .collect();
    let run = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_ne!(run.code, 0);
    assert!(
        run.stdout
            .contains("[FAILED   ] webhook: PUBLIC_URL is unset"),
        "{}",
        run.stdout
    );
    assert_eq!(fake.fields().len(), 1, "the field step still ran");
}

#[tokio::test]
async fn a_disabled_or_incomplete_webhook_is_repaired() {
    let fake = FakeKommo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = kommo_env(&fake, dir.path());
    fake.add_webhook(&destination(PUBLIC), EVENTS, true);
    let run = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.stdout.contains("re-enable"), "{}", run.stdout);
    let hooks = fake.webhooks();
    assert_eq!(hooks.len(), 1);
    assert!(!hooks[0].disabled);

    // A hook an admin made with other events keeps them and gains ours.
    let other = "https://other.example";
    let mut env = kommo_env(&fake, dir.path());
    env[2].1 = other.into();
    fake.add_webhook(&destination(other), &["add_lead"], false);
    let run = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_eq!(run.code, 0, "{}", run.stdout);
    let hook = fake
        .webhooks()
        .into_iter()
        .find(|h| h.destination == destination(other))
        .unwrap();
    for event in EVENTS.iter().chain(&["add_lead"]) {
        assert!(
            hook.settings.iter().any(|s| s == event),
            "{event}: {hook:?}"
        );
    }
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn check_says_no_naming_each_failure_until_a_customer_would_be_answered() {
    let fake = FakeKommo::start().await;
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let token = fake.issue_long_lived_token(Duration::from_secs(86_400));
    let mut env: Vec<(&str, String)> = vec![
        ("KOMMO_API_URL", fake.api_url()),
        ("KOMMO_ACCESS_TOKEN", token),
        ("WEBHOOK_SECRET", SECRET.into()),
        ("N8N_WEBHOOK_URL", n8n.url()),
        ("N8N_SHARED_SECRET", "n8n-shared-secret-0123".into()),
        ("API_KEY", "operator-key-0123456789".into()),
        ("DATA_DIR", data.clone()),
    ];
    let service_env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([("PUBLIC_URL", "http://127.0.0.1:{port}".to_owned())])
        .collect();
    let borrowed: Vec<(&str, &str)> = service_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let s = Service::start(&borrowed).await;
    let public = s.url("");
    let public = public.trim_end_matches('/').to_owned();
    env.push(("PUBLIC_URL", public.clone()));

    // Before setup: no webhook, no reply field, no bot.
    let run = conversa(dir.path(), &["check", "--json"], &env).await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["customers_answered"], false);
    assert_eq!(
        failed(&report),
        [
            "REPLY_CHANNEL",
            "KOMMO_REPLY_FIELD_ID",
            "KOMMO_REPLY_BOT_ID",
            "kommo.webhook"
        ],
        "{report:#}"
    );
    assert!(!run.stdout.contains(SECRET));

    let setup = conversa(dir.path(), &["setup", "kommo", "--write-env"], &env).await;
    assert_eq!(setup.code, 0, "{}", setup.stdout);
    assert!(
        setup.stdout.contains("in use by the running service"),
        "{}",
        setup.stdout
    );
    let field = fake.fields()[0].id;
    env.push(("KOMMO_REPLY_FIELD_ID", field.to_string()));
    env.push(("KOMMO_REPLY_BOT_ID", "84562".into()));

    let run = conversa(dir.path(), &["check"], &env).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("Yes: every check passed"),
        "{}",
        run.stdout
    );
    for name in [
        "kommo.account",
        "kommo.webhook",
        "kommo.reply_field",
        "n8n.workflow",
        "PUBLIC_URL.reachable",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains("ok  ") && l.contains(name)),
            "{name}: {}",
            run.stdout
        );
    }

    // Kommo switches the hook off; the workflow is deactivated: both named.
    fake.set_webhook_disabled(&destination(&public), true);
    let mut broken = env.clone();
    broken.retain(|(k, _)| *k != "N8N_WEBHOOK_URL");
    broken.push((
        "N8N_WEBHOOK_URL",
        n8n.url().replace("/webhook/conversa", "/webhook/inactive"),
    ));
    let run = conversa(dir.path(), &["check", "--json"], &broken).await;
    assert_eq!(run.code, 1);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        failed(&report),
        ["kommo.webhook", "n8n.workflow"],
        "{report:#}"
    );

    // `/ready` carries the same checks (its own settings: no reply ids, so it says no).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let (_, body) = s.get("/ready").await;
        if !body["go_live"]["checked_online_at"].is_null() {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/ready never ran its online checks: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let go_live = &ready["go_live"];
    assert_eq!(go_live["customers_answered"], false, "{ready:#}");
    assert_eq!(
        failed(go_live),
        [
            "REPLY_CHANNEL",
            "KOMMO_REPLY_FIELD_ID",
            "KOMMO_REPLY_BOT_ID",
            "kommo.webhook"
        ],
        "{go_live:#}"
    );
    assert!(!ready.to_string().contains(SECRET));
}

#[tokio::test]
async fn setup_kommo_with_an_oauth_pair_refreshes_and_keeps_the_rotated_pair() {
    let fake = FakeKommo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (access, refresh) = fake.issue_tokens();
    // The access token is stale: the first call gets 401, the client refreshes (single use).
    fake.expire_access_token();
    let env: Vec<(&str, String)> = vec![
        ("KOMMO_API_URL", fake.api_url()),
        ("KOMMO_ACCESS_TOKEN", access),
        ("KOMMO_REFRESH_TOKEN", refresh),
        ("KOMMO_CLIENT_ID", fake_kommo::CLIENT_ID.into()),
        ("KOMMO_CLIENT_SECRET", fake_kommo::CLIENT_SECRET.into()),
        ("KOMMO_REDIRECT_URI", fake_kommo::REDIRECT_URI.into()),
        ("PUBLIC_URL", PUBLIC.into()),
        ("WEBHOOK_SECRET", SECRET.into()),
        ("DATA_DIR", dir.path().join("data").display().to_string()),
    ];
    let run = conversa(dir.path(), &["setup", "kommo"], &env).await;
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(fake.refresh_count(), 1);
    // The environment's refresh token is spent; the rotated pair lives in the store, so a
    // second run (same environment) still works without another refresh.
    let again = conversa(dir.path(), &["check", "--json"], &env).await;
    let report: Value = serde_json::from_str(&again.stdout).unwrap();
    let account = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kommo.account")
        .unwrap()
        .clone();
    assert_eq!(account["status"], "ok", "{report:#}");
    assert_eq!(fake.refresh_count(), 1, "no second refresh");
}
