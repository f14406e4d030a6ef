//! `/metrics` exposes the promised families after a scripted conversation; every family has a
//! `# HELP`, the `conversa_` prefix and a place in `recorder::CATALOGUE`; the alert rules and the
//! dashboard of `deploy/` name only catalogued metrics.

mod support;

use std::time::Duration;

use serde_json::json;
use support::fake_n8n::FakeN8n;
use support::service::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_http_actors_events_effects_replies_outbox_and_store() {
    let n8n = FakeN8n::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", dir.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.url()),
    ])
    .await;
    let r = s
        .client
        .post(s.url("/webhooks/kommo"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("message%5Badd%5D%5B0%5D%5Bid%5D=m1&message%5Badd%5D%5B0%5D%5Bcontact_id%5D=5&message%5Badd%5D%5B0%5D%5Btext%5D=Oi")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = n8n.wait_for_accepted(1, Duration::from_secs(10)).await;
    let d = got[0].body["dispatch_id"].as_str().unwrap();
    let (status, _) = s
        .post("/bot-control", json!({"contact_id": 5, "command": "pause"}))
        .await;
    assert_eq!(status, 200);
    let (status, reply) = s
        .post(
            "/send-response",
            json!({"contact_id": 5, "dispatch_id": d, "text": "Olá"}),
        )
        .await;
    assert_eq!((status, reply["reason"].as_str()), (200, Some("paused")));

    let text = s.metrics().await;
    for family in [
        "conversa_http_requests_total{route=\"/webhooks/kommo\",method=\"POST\",status=\"200\"}",
        "conversa_http_request_duration_seconds_bucket",
        "conversa_actors_active",
        "conversa_actor_activations_total",
        "conversa_actor_passivations_total",
        "conversa_actor_restarts_total",
        "conversa_events_total{type=\"customer_message\"}",
        "conversa_effects_total{kind=\"dispatch_message\",result=\"ok\"}",
        "conversa_effect_seconds_bucket{kind=\"dispatch_message\"",
        "conversa_replies_total{result=\"dropped\",reason=\"paused\"}",
        "conversa_outbox_pending_contacts",
        "conversa_effects_running",
        "conversa_store_seconds_bucket{op=\"save\"",
        "conversa_store_seconds_bucket{op=\"load\"",
        "conversa_store_cas_conflicts_total",
        "conversa_kommo_webhook_events_total{event=\"message:incoming\"}",
        "conversa_kommo_limiter_waits_total",
        "conversa_kommo_token_refreshes_total",
    ] {
        assert!(text.contains(family), "missing {family} in:\n{text}");
    }
}

use conversa::recorder::{CATALOGUE, Kind};

fn catalogued(name: &str) -> Option<Kind> {
    let base = ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    CATALOGUE
        .iter()
        .find(|(n, ..)| *n == name || *n == base)
        .map(|(_, k, _)| *k)
}

/// The `conversa_…` metric names an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("conversa_") {
        let rest = &expr[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(rest.len());
        out.push(rest[..end].to_owned());
    }
    out
}

#[tokio::test]
async fn every_family_has_help_one_prefix_and_a_build_info() {
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[("DATA_DIR", data.path().to_str().unwrap())]).await;
    s.customer_says(4242, "m-help", "Oi").await;
    let _ = s.get("/ready").await;
    let text = s.metrics().await;
    let families: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert!(families.len() >= 15, "{text}");
    for (name, kind) in &families {
        assert!(
            name.starts_with("conversa_"),
            "{name} has no conversa_ prefix"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "{name} has no # HELP"
        );
        let want = match catalogued(name) {
            Some(Kind::Counter) => "counter",
            Some(Kind::Gauge) => "gauge",
            Some(Kind::Histogram) => "histogram",
            None => panic!("{name} is exported but not in recorder::CATALOGUE"),
        };
        assert_eq!(*kind, want, "{name}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("conversa_build_info{")
            && l.contains("commit=")
            && l.ends_with(" 1")),
        "{text}"
    );
}

#[test]
fn the_catalogue_names_every_metric_the_code_records() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stack = vec![root.join("src"), root.join("actors/src")];
    let mut recorded = std::collections::BTreeSet::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for macro_name in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(macro_name) {
                    let rest = text[i + macro_name.len()..].trim_start();
                    if let Some(quoted) = rest.strip_prefix('"') {
                        let name = &quoted[..quoted.find('"').unwrap()];
                        recorded.insert((macro_name.trim_end_matches("!("), name.to_owned()));
                    }
                }
            }
        }
    }
    assert!(recorded.len() >= 20, "{recorded:?}");
    for (macro_name, name) in &recorded {
        let kind = catalogued(name).unwrap_or_else(|| panic!("{name} is not in the catalogue"));
        let want = match macro_name.rsplit(':').next().unwrap() {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            _ => Kind::Histogram,
        };
        assert_eq!(kind, want, "{name}");
    }
}

#[test]
fn alert_rules_and_the_dashboard_use_catalogued_metrics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules_path = root.join("deploy/prometheus/alerts.yml");
    let docs =
        yaml_rust2::YamlLoader::load_from_str(&std::fs::read_to_string(&rules_path).unwrap())
            .expect("valid YAML");
    let rules = docs[0]["groups"][0]["rules"]
        .as_vec()
        .expect("a group of rules");
    assert!(rules.len() >= 8);
    for rule in rules {
        let alert = rule["alert"].as_str().expect("alert name");
        let expr = rule["expr"].as_str().expect("expr");
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("critical" | "warning" | "info")
            ),
            "{alert}: severity"
        );
        for key in ["summary", "runbook"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| s.len() > 10),
                "{alert}: {key}"
            );
        }
        for name in metric_names(expr) {
            assert!(
                catalogued(&name).is_some(),
                "{alert} uses {name}, which conversa does not export"
            );
        }
    }
    // promtool, where it is installed (Debian's `prometheus` package), checks the syntax too.
    if let Ok(out) = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
    {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/conversa.json")).unwrap(),
    )
    .expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut used = 0;
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                assert!(catalogued(&name).is_some(), "{}: {name}", panel["title"]);
                used += 1;
            }
        }
    }
    assert!(used >= 15);
}
