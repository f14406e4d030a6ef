//! The README's flows are true as written: this test reads the `curl` lines of README.md's
//! "The flows, with curl" section, runs them in order with `bash` against the real binary on a
//! fresh store (Kommo and n8n are the fakes of `tests/support/`, configured as the section
//! says), and checks each answer against the first `# …` line under its command: the status
//! when one is written (`# 201 {…}`), and every top-level `"key":value` the line shows (`{...}`
//! and `…` stand for what it leaves out). The README cannot drift from the product again.

mod support;

use std::process::Command;

use serde_json::Value;
use support::fake_kommo::{FakeKommo, FakeLead, FakeUser};
use support::fake_n8n::FakeN8n;
use support::service::Service;

/// One `curl` of the README and what its first comment line promises.
#[derive(Debug)]
struct Step {
    command: String,
    status: Option<u16>,
    expected: Option<String>,
}

/// Whether `text` ends inside a quote (single or double, as bash reads it).
fn open_quote(text: &str) -> bool {
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in text.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            _ => {}
        }
    }
    single || double
}

/// The `curl` commands of the flows section, in order, with their expectations.
fn steps(readme: &str) -> Vec<Step> {
    let start = readme
        .find("### The flows, with curl")
        .expect("the flows section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut current: Option<String> = None;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = current.as_mut() {
            cmd.push('\n');
            cmd.push_str(line);
        } else if line.starts_with("curl ") {
            current = Some(line.to_owned());
        } else if let Some(comment) = line.strip_prefix("# ") {
            if let Some(last) = steps.last_mut()
                && last.expected.is_none()
            {
                let (status, rest) = match comment.split_once(' ') {
                    Some((code, rest)) if code.len() == 3 && code.parse::<u16>().is_ok() => {
                        (code.parse().ok(), rest)
                    }
                    _ => (None, comment),
                };
                if rest.starts_with('{') {
                    last.status = status;
                    last.expected = Some(rest.to_owned());
                }
            }
            continue;
        }
        if let Some(cmd) = &current
            && !cmd.ends_with('\\')
            && !open_quote(cmd)
        {
            steps.push(Step {
                command: current.take().unwrap(),
                status: None,
                expected: None,
            });
        }
    }
    steps
}

/// The top-level `"key": scalar` pairs a README line shows.
fn promised_pairs(line: &str) -> Vec<(String, Value)> {
    let chars: Vec<char> = line.chars().collect();
    let mut pairs = Vec::new();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < chars.len() {
        match chars[i] {
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            '"' => {
                let end = (i + 1..chars.len())
                    .find(|&j| chars[j] == '"' && chars[j - 1] != '\\')
                    .unwrap_or(chars.len());
                let key: String = chars[i + 1..end].iter().collect();
                let mut j = end + 1;
                if depth == 1 && chars.get(j) == Some(&':') {
                    j += 1;
                    let rest: String = chars[j..].iter().collect();
                    let mut values = serde_json::Deserializer::from_str(&rest).into_iter::<Value>();
                    if let Some(Ok(v)) = values.next()
                        && !v.is_object()
                        && !v.is_array()
                    {
                        pairs.push((key, v));
                        j += rest[..values.byte_offset()].chars().count();
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_flows_are_true_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let steps = steps(&readme);
    assert!(steps.len() >= 10, "the flows' curls: {steps:#?}");

    // The world the section describes: a Kommo account with the lead of the example (its
    // responsible user a seller), the Salesbot reply channel, and n8n.
    let kommo = FakeKommo::start().await;
    let mut lead = FakeLead::new(878244);
    lead.contact_ids = vec![1298200];
    lead.responsible_user_id = 7001;
    kommo.add_lead(lead);
    let mut lead = FakeLead::new(878300);
    lead.contact_ids = vec![1298300];
    lead.responsible_user_id = 7001;
    kommo.add_lead(lead);
    kommo.add_lead_field(555);
    kommo.add_user(FakeUser::new(7001, "Carla Mendes"));
    let (access, refresh) = kommo.issue_tokens();
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (api, hook) = (kommo.api_url(), n8n.url());
    let env = [
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("WEBHOOK_SECRET", "readme-webhook-secret"),
        ("N8N_CALLBACK_TOKEN", "readme-callback-token"),
        ("N8N_WEBHOOK_URL", &hook),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("KOMMO_API_URL", &api),
        ("KOMMO_ACCESS_TOKEN", &access),
        ("KOMMO_REFRESH_TOKEN", &refresh),
        ("KOMMO_REPLY_FIELD_ID", "555"),
        ("KOMMO_REPLY_BOT_ID", "84562"),
    ];
    let service = Service::start(&env).await;
    let base = service.url("");
    let base = base.trim_end_matches('/').trim_start_matches("http://");

    let mut failures = Vec::new();
    for step in &steps {
        let command = step.command.replace("localhost:8000", base);
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{command} -w '\\n%{{http_code}}'"))
            .env("WEBHOOK_SECRET", "readme-webhook-secret")
            .env("N8N_CALLBACK_TOKEN", "readme-callback-token")
            .output()
            .expect("bash and curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let code: u16 = code.trim().parse().unwrap_or(0);
        let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        let wanted = step.status.map_or(code < 300, |s| s == code);
        if !wanted {
            failures.push(format!(
                "{}\n  status {code} (README: {:?}), answer {body}",
                step.command, step.status
            ));
            continue;
        }
        for (key, value) in step
            .expected
            .as_deref()
            .map(promised_pairs)
            .unwrap_or_default()
        {
            if answer[&key] != value {
                failures.push(format!(
                    "{}\n  {key}: README says {value}, the answer has {} ({body})",
                    step.command, answer[&key]
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the README's flows differ from the product:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_readme_parser_reads_commands_statuses_and_pairs() {
    let text = "### The flows, with curl\n\n```sh\ncurl -s -X POST 'x' \\\n  -d '{\"a\": 1,\n  \"b\": 2}'\n# 201 {\"created\":true,\"vendedor\":{\"id\":\"x\"},\"n\":3,...}\n# 200 {\"created\":false}\ncurl -s y\n```\n\n## Next\n";
    let steps = steps(text);
    assert_eq!(steps.len(), 2, "{steps:#?}");
    assert_eq!(steps[0].status, Some(201));
    let pairs = promised_pairs(steps[0].expected.as_deref().unwrap());
    assert_eq!(
        pairs,
        [
            ("created".to_owned(), Value::Bool(true)),
            ("n".to_owned(), Value::from(3))
        ]
    );
    assert_eq!(steps[1].expected, None);
}
