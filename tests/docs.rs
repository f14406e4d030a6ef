//! docs/getting-started-kommo.md is true as written: this test follows it as a new team would,
//! with the fake Kommo and the fake n8n standing in for the real ones. It copies `.env.example`
//! to `.env`, sets the variables the page's settings block lists (the fakes' addresses and fresh
//! secrets where the page shows `...`), then runs every `conversa …` and `curl …` line of the
//! page in order, in that directory, and checks each against the comment under it
//! (`# exit N: text` for the binary, a JSON line for curl). Between sections it does what the
//! page asks of a human: the Salesbot's id goes into `.env` (section 4), and the service is
//! started on `PUBLIC_URL` (section 6). The `docker compose` lines are not run (no Docker
//! engine on these machines; tests/deployment.rs checks the files).

mod support;

use std::path::Path;

use conversa::golive::env_file;
use support::fake_kommo::FakeKommo;
use support::fake_n8n::FakeN8n;
use support::service::{Service, free_port};

#[derive(Debug)]
enum Step {
    /// Entering `## N.`.
    Section(u32),
    Conversa {
        args: Vec<String>,
        exit: i32,
        text: String,
    },
    Curl {
        command: String,
        expected: String,
    },
    Shell(String),
}

fn steps(page: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let lines: Vec<&str> = page.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if let Some(n) = line.strip_prefix("## ") {
            if let Some(num) = n.split('.').next().and_then(|d| d.parse().ok()) {
                out.push(Step::Section(num));
            }
            continue;
        }
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let next = lines.get(i + 1).copied().unwrap_or("");
        if let Some(rest) = line.strip_prefix("conversa ") {
            let comment = next
                .strip_prefix("# exit ")
                .expect("a `# exit N: text` line");
            let (code, text) = comment.split_once(": ").expect("`N: text`");
            out.push(Step::Conversa {
                args: rest.split_whitespace().map(str::to_owned).collect(),
                exit: code.parse().unwrap(),
                text: text.to_owned(),
            });
        } else if line.starts_with("curl ") {
            out.push(Step::Curl {
                command: line.to_string(),
                expected: next.trim_start_matches("# ").to_owned(),
            });
        } else if line.starts_with("cp ") {
            out.push(Step::Shell(line.to_string()));
        }
    }
    out
}

/// The `KEY=value` lines of the page's settings block (section 2).
fn settings(page: &str) -> Vec<(String, String)> {
    let start = page.find("Set, in `.env`:").expect("the settings block");
    let block = &page[start..];
    let block = &block[block.find("```sh").unwrap() + 5..];
    let block = &block[..block.find("```").unwrap()];
    block
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.split("  #").next().unwrap().trim();
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

async fn conversa(dir: &Path, args: &[String]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_conversa"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("run conversa");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Every `"key":value` of `expected` (a JSON line with `...` for what it leaves out) is in
/// `body`, at any depth.
fn shows(body: &str, expected: &str) -> bool {
    expected
        .split([',', '{', '}'])
        .map(str::trim)
        .filter(|p| p.contains(':') && !p.contains("..."))
        .all(|p| body.contains(p))
}

#[tokio::test]
async fn the_getting_started_page_runs_as_written() {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/getting-started-kommo.md"
    ))
    .unwrap();
    let fake = FakeKommo::start().await;
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let public = format!("http://127.0.0.1:{port}");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"),
        dir.path().join(".env.example"),
    )
    .unwrap();

    // What each setting of the page is on this machine.
    let token = fake.issue_long_lived_token(std::time::Duration::from_secs(86_400));
    let mut values: Vec<(String, String)> = settings(&page)
        .into_iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "KOMMO_API_URL" => fake.api_url(),
                "KOMMO_ACCESS_TOKEN" => token.clone(),
                "PUBLIC_URL" => public.clone(),
                "N8N_WEBHOOK_URL" => n8n.url(),
                _ if v == "..." => format!("{}-0123456789abcdef", k.to_lowercase()),
                _ => v,
            };
            (k, v)
        })
        .collect();
    let names: Vec<&str> = values.iter().map(|(k, _)| k.as_str()).collect();
    for needed in [
        "KOMMO_API_URL",
        "KOMMO_ACCESS_TOKEN",
        "PUBLIC_URL",
        "WEBHOOK_SECRET",
    ] {
        assert!(names.contains(&needed), "the page sets {needed}");
    }
    // Not the page's business: the store of this run, in the run's directory.
    values.push((
        "DATA_DIR".into(),
        dir.path().join("data").display().to_string(),
    ));

    let mut service = None;
    let mut ran = 0;
    for step in steps(&page) {
        match step {
            Step::Section(2) => {}
            Step::Section(4) => {
                // The Salesbot is made by hand; its id goes into `.env`.
                env_file::update(
                    &dir.path().join(".env"),
                    &[("KOMMO_REPLY_BOT_ID".into(), "84562".into())],
                )
                .unwrap();
            }
            Step::Section(6) => {
                let env: Vec<(String, String)> = dotenvy::from_path_iter(dir.path().join(".env"))
                    .unwrap()
                    .map(Result::unwrap)
                    .filter(|(k, _)| !matches!(k.as_str(), "HOST" | "PORT" | "LOG_FORMAT"))
                    .collect();
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                service = Some(Service::start_on(port, &env).await);
            }
            Step::Section(_) => {}
            Step::Shell(command) => {
                let status = std::process::Command::new("bash")
                    .args(["-c", &command])
                    .current_dir(dir.path())
                    .status()
                    .unwrap();
                assert!(status.success(), "{command}");
                // Section 2: the user edits `.env`.
                env_file::update(&dir.path().join(".env"), &values).unwrap();
                ran += 1;
            }
            Step::Conversa { args, exit, text } => {
                let (code, output) = conversa(dir.path(), &args).await;
                assert_eq!(code, exit, "conversa {}:\n{output}", args.join(" "));
                assert!(
                    output.contains(&text),
                    "conversa {} prints {text:?}:\n{output}",
                    args.join(" ")
                );
                assert!(
                    !output.contains(&token) && !output.contains("webhook_secret-0123"),
                    "no secret printed"
                );
                ran += 1;
            }
            Step::Curl { command, expected } => {
                let command = command.replace("https://conversa.example.com", &public);
                let out = std::process::Command::new("bash")
                    .args(["-c", &command])
                    .output()
                    .unwrap();
                let body = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(out.status.success(), "{command}");
                // `/ready` asks Kommo and n8n in the background: the first answer may predate it.
                let mut body = body;
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while !shows(&body, &expected) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{command} shows {expected}: {body}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let out = std::process::Command::new("bash")
                        .args(["-c", &command])
                        .output()
                        .unwrap();
                    body = String::from_utf8_lossy(&out.stdout).into_owned();
                }
                ran += 1;
            }
        }
    }
    assert!(service.is_some(), "section 6 started the service");
    assert!(ran >= 7, "ran {ran} commands");
    // What setup left in the account and in `.env`.
    let env = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    let field = fake.fields()[0].id;
    assert!(
        env.contains(&format!("KOMMO_REPLY_FIELD_ID={field}")),
        "{env}"
    );
    assert_eq!(fake.webhooks().len(), 1);
}

/// Every `docs/….md` the code sends a user to exists (messages of `check` and `setup kommo`).
#[test]
fn the_docs_the_code_points_to_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stack = vec![root.join("src")];
    let mut named = std::collections::BTreeSet::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (i, _) in text.match_indices("docs/") {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || "/-_.".contains(c)))
                    .unwrap_or(rest.len());
                let name = rest[..end].trim_end_matches('.');
                if name.ends_with(".md") {
                    named.insert(name.to_owned());
                }
            }
        }
    }
    assert!(named.contains("docs/getting-started-kommo.md"), "{named:?}");
    for name in &named {
        assert!(
            root.join(name).is_file(),
            "{name} is named in src/ but does not exist"
        );
    }
}
