//! Every alert rule of `deploy/prometheus/alerts.yml` fires when its condition is driven: each
//! test brings the real binary (with the fakes of Kommo and n8n and a real Redis) into the
//! state an alert is about, scrapes `/metrics` before and after, and evaluates the rule's
//! expression against the two scrapes — false before, true after.
//!
//! The evaluator below knows the shapes of expression the rules use (a gauge compared with a
//! number, `increase(counter[w])`, `sum(increase(counter[w]))`, `sum(rate(counter[w]))`,
//! `time() - gauge`, and Prometheus' own `up`); a rule of another shape fails the test until it learns it. A
//! rule's `for:` is not waited for (the state driven holds until the test ends), and
//! `time()` may be moved forward: "nothing advanced for 15 minutes" is driven as "nothing
//! advances" and evaluated 15 minutes on. `promtool check rules` (tests/metrics.rs) checks the
//! syntax with Prometheus' own parser.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::fake_kommo::{self, FakeKommo, FakeMessage, message_add_form};
use support::fake_n8n::FakeN8n;
use support::redis_server::RedisServer;
use support::service::Service;

// ---- scrapes ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape of `/metrics`: when, whether it answered, what it said.
#[derive(Clone, Debug)]
struct Scrape {
    /// Unix seconds.
    at: f64,
    up: bool,
    samples: Vec<Sample>,
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').trim().to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name, value);
        rest = &rest[end..];
    }
    labels
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            })
        })
        .collect()
}

async fn scrape(s: &Service) -> Scrape {
    let at = now_unix();
    match s.client.get(s.url("/metrics")).send().await {
        Ok(r) if r.status().is_success() => Scrape {
            at,
            up: true,
            samples: parse(&r.text().await.unwrap()),
        },
        _ => Scrape {
            at,
            up: false,
            samples: Vec::new(),
        },
    }
}

/// A scrape of a service that is gone.
fn scrape_of_nothing() -> Scrape {
    Scrape {
        at: now_unix(),
        up: false,
        samples: Vec::new(),
    }
}

// ---- the evaluator ------------------------------------------------------------------------

/// `name{label="v",label=~"re"}` → the name and its matchers.
#[derive(Clone, Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, bool, String)>,
}

fn selector(text: &str) -> Selector {
    let text = text.trim();
    let (name, matchers) = match text.split_once('{') {
        None => (text, Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').expect("a closing brace");
            let matchers = body
                .split(',')
                .filter(|m| !m.trim().is_empty())
                .map(|m| {
                    let (label, regex, value) = match m.split_once("=~") {
                        Some((l, v)) => (l, true, v),
                        None => {
                            let (l, v) = m.split_once('=').expect("a matcher");
                            (l, false, v)
                        }
                    };
                    (
                        label.trim().to_owned(),
                        regex,
                        value.trim().trim_matches('"').to_owned(),
                    )
                })
                .collect();
            (name, matchers)
        }
    };
    Selector {
        name: name.trim().to_owned(),
        matchers,
    }
}

/// A full match of `pattern`, whose only special character is `.` (what the rules use).
fn dot_match(pattern: &str, value: &str) -> bool {
    pattern.chars().count() == value.chars().count()
        && pattern
            .chars()
            .zip(value.chars())
            .all(|(p, v)| p == '.' || p == v)
}

impl Selector {
    fn matches(&self, s: &Sample) -> bool {
        s.name == self.name
            && self.matchers.iter().all(|(label, regex, want)| {
                let have = s.labels.get(label).map_or("", String::as_str);
                if *regex {
                    assert!(
                        want.chars().all(|c| c == '.' || c.is_ascii_alphanumeric()),
                        "the evaluator knows only `.` in regexes: {want}"
                    );
                    dot_match(want, have)
                } else {
                    have == want
                }
            })
    }

    fn values<'a>(&self, scrape: &'a Scrape) -> Vec<(&'a BTreeMap<String, String>, f64)> {
        scrape
            .samples
            .iter()
            .filter(|s| self.matches(s))
            .map(|s| (&s.labels, s.value))
            .collect()
    }
}

#[derive(Debug)]
enum Operand {
    /// Prometheus' own `up`: 1 when the scrape answered.
    Up,
    Gauge(Selector),
    Increase(Selector),
    SumIncrease(Selector),
    SumRate(Selector),
    TimeMinus(Selector),
}

#[derive(Debug)]
struct Rule {
    operand: Operand,
    op: String,
    threshold: f64,
}

/// The inside of `f(...)[w]`: the selector without its range.
fn ranged(inner: &str) -> Selector {
    let (sel, _range) = inner.rsplit_once('[').expect("a range vector");
    selector(sel)
}

fn rule(alert: &str, expr: &str) -> Rule {
    let (lhs, op, threshold) = [" == ", " > ", " < "]
        .iter()
        .find_map(|op| {
            expr.rsplit_once(op)
                .map(|(l, r)| (l.trim(), op.trim(), r.trim()))
        })
        .unwrap_or_else(|| panic!("{alert}: no comparison in {expr}"));
    let threshold: f64 = threshold
        .parse()
        .unwrap_or_else(|_| panic!("{alert}: threshold {threshold}"));
    let operand = if let Some(inner) = lhs
        .strip_prefix("sum(increase(")
        .and_then(|r| r.strip_suffix("))"))
    {
        Operand::SumIncrease(ranged(inner))
    } else if let Some(inner) = lhs
        .strip_prefix("sum(rate(")
        .and_then(|r| r.strip_suffix("))"))
    {
        Operand::SumRate(ranged(inner))
    } else if let Some(inner) = lhs
        .strip_prefix("increase(")
        .and_then(|r| r.strip_suffix(')'))
    {
        Operand::Increase(ranged(inner))
    } else if let Some(gauge) = lhs.strip_prefix("time() - ") {
        Operand::TimeMinus(selector(gauge))
    } else if lhs.starts_with("up{") || lhs == "up" {
        Operand::Up
    } else if lhs.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Operand::Gauge(selector(lhs))
    } else {
        panic!("{alert}: an expression shape tests/alerts.rs does not evaluate yet: {expr}")
    };
    Rule {
        operand,
        op: op.to_owned(),
        threshold,
    }
}

fn rules() -> BTreeMap<String, Rule> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
    docs[0]["groups"][0]["rules"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|r| {
            let alert = r["alert"].as_str().unwrap();
            (alert.to_owned(), rule(alert, r["expr"].as_str().unwrap()))
        })
        .collect()
}

impl Rule {
    fn holds(&self, value: f64) -> bool {
        match self.op.as_str() {
            "==" => value == self.threshold,
            ">" => value > self.threshold,
            "<" => value < self.threshold,
            op => panic!("operator {op}"),
        }
    }

    /// Whether the alert's expression returns anything at `after`, `before` being the
    /// previous scrape (for increases and rates) and `later` seconds added to `time()`.
    fn fires(&self, before: &Scrape, after: &Scrape, later: f64) -> bool {
        let values: Vec<f64> = match &self.operand {
            Operand::Up => vec![if after.up { 1.0 } else { 0.0 }],
            Operand::Gauge(sel) => sel.values(after).into_iter().map(|(_, v)| v).collect(),
            Operand::TimeMinus(sel) => sel
                .values(after)
                .into_iter()
                .map(|(_, v)| after.at + later - v)
                .collect(),
            Operand::Increase(sel) => sel
                .values(after)
                .into_iter()
                .map(|(labels, v)| {
                    let was = sel
                        .values(before)
                        .into_iter()
                        .find(|(l, _)| *l == labels)
                        .map_or(0.0, |(_, v)| v);
                    v - was
                })
                .collect(),
            Operand::SumIncrease(sel) => {
                let was: f64 = sel.values(before).iter().map(|(_, v)| v).sum();
                let now: f64 = sel.values(after).iter().map(|(_, v)| v).sum();
                vec![now - was]
            }
            Operand::SumRate(sel) => {
                let was: f64 = sel.values(before).iter().map(|(_, v)| v).sum();
                let now: f64 = sel.values(after).iter().map(|(_, v)| v).sum();
                vec![(now - was) / (after.at - before.at).max(1e-3)]
            }
        };
        values.into_iter().any(|v| self.holds(v))
    }
}

/// Asserts the alert `name` is silent from `a` to `b` and fires from `b` to `c`.
fn driven(
    checked: &mut BTreeSet<String>,
    rules: &BTreeMap<String, Rule>,
    name: &str,
    (a, b, c): (&Scrape, &Scrape, &Scrape),
) {
    let rule = &rules[name];
    assert!(!rule.fires(a, b, 0.0), "{name} fired before its condition");
    assert!(rule.fires(b, c, 0.0), "{name} did not fire: {rule:?}");
    checked.insert(name.to_owned());
}

// ---- driving the service ------------------------------------------------------------------

const SECRET: &str = "alerts-webhook-secret-0123456789";

struct World {
    kommo: FakeKommo,
    n8n: FakeN8n,
    redis: Option<RedisServer>,
    service: Service,
}

async fn world(extra: &[(&str, &str)]) -> World {
    let kommo = FakeKommo::start().await;
    let token = kommo.issue_long_lived_token(Duration::from_secs(86_400));
    let n8n = FakeN8n::start().await;
    let redis = RedisServer::start();
    let account = fake_kommo::ACCOUNT_ID.to_string();
    let mut env = vec![
        ("REDIS_URL", redis.url()),
        ("KOMMO_API_URL", kommo.api_url()),
        ("KOMMO_ACCESS_TOKEN", token),
        ("KOMMO_ACCOUNT_ID", account),
        ("N8N_WEBHOOK_URL", n8n.url()),
        ("PUBLIC_URL", "http://127.0.0.1:{port}".to_owned()),
        ("WEBHOOK_SECRET", SECRET.to_owned()),
        ("WEBHOOK_WATCH_SECS", "1".to_owned()),
        ("GAP_CHECK_SECS", "1".to_owned()),
        ("GAP_GRACE_SECS", "1".to_owned()),
        ("DEBOUNCE_MS", "0".to_owned()),
    ];
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, (*v).to_owned()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = Service::start(&env).await;
    World {
        kommo,
        n8n,
        redis: Some(redis),
        service,
    }
}

/// Scrapes until `cond` holds of the scrape (20 s at most).
async fn scrape_until(s: &Service, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = scrape(s).await;
        if cond(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", got.samples);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn value(scrape: &Scrape, series: &str) -> f64 {
    let sel = selector(series);
    sel.values(scrape).iter().map(|(_, v)| v).sum()
}

/// A customer message through the webhook (its path carries the secret).
async fn says(w: &World, contact: u64, id: &str) {
    let body = message_add_form(
        fake_kommo::ACCOUNT_ID,
        fake_kommo::SUBDOMAIN,
        &[FakeMessage::incoming(
            id,
            contact,
            contact + 1_000_000,
            1,
            "Oi",
        )],
    );
    let (status, answer) = w
        .service
        .post_form(&format!("/webhooks/kommo/{SECRET}"), body)
        .await;
    assert_eq!(status, 200, "{answer}");
}

async fn ready(s: &Service) -> Value {
    s.get("/ready").await.1
}

#[tokio::test]
async fn the_alerts_of_a_bad_day_fire_when_their_condition_is_driven() {
    let rules = rules();
    let mut checked = BTreeSet::new();
    let mut w = world(&[]).await;
    let s0 = scrape(&w.service).await;

    // The watchdog registers the missing webhook: a repair.
    let s1 = scrape_until(&w.service, "the first repair", |s| {
        value(s, "conversa_webhook_repairs_total") >= 1.0 && value(s, "conversa_webhook_ok") == 1.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaWebhookRepaired",
        (&s0, &s0, &s1),
    );

    // Then someone removes it while the account is full: it cannot be registered again.
    for i in 0..100 {
        w.kommo.add_webhook(
            &format!("https://other.example/hook/{i}"),
            &["add_lead"],
            false,
        );
    }
    w.kommo
        .remove_webhook(&format!("{}/webhooks/kommo/{SECRET}", w.service.url("")));
    let s2 = scrape_until(&w.service, "the webhook not ok", |s| {
        value(s, "conversa_webhook_ok") == 0.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaWebhookNotOk",
        (&s1, &s1, &s2),
    );

    // A customer message Kommo has and conversa never received.
    w.kommo.customer_wrote(
        4242,
        "a1b2c3d4-0000-4000-8000-000000000001",
        now_unix() as u64,
    );
    let s3 = scrape_until(&w.service, "a missed message", |s| {
        value(s, "conversa_messages_missed_total") >= 1.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaMessagesMissed",
        (&s2, &s2, &s3),
    );

    // n8n refuses a dispatch for good: a dead letter.
    w.n8n.fail_next_with(1, 400);
    says(&w, 4343, "dead-1").await;
    let s4 = scrape_until(&w.service, "a dead letter", |s| {
        value(s, "conversa_effects_dead_lettered_total") >= 1.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaEffectsDeadLettered",
        (&s3, &s3, &s4),
    );

    // A webhook item that cannot be read.
    let bad = message_add_form(
        fake_kommo::ACCOUNT_ID,
        fake_kommo::SUBDOMAIN,
        &[FakeMessage::incoming("bad-1", 4444, 1, 1, "Oi")],
    )
    .replace("contact_id%5D=4444", "contact_id%5D=abc");
    assert!(bad.contains("contact_id%5D=abc"), "{bad}");
    let (status, answer) = w
        .service
        .post_form(&format!("/webhooks/kommo/{SECRET}"), bad)
        .await;
    assert_eq!(status, 200, "{answer}");
    let s5 = scrape_until(&w.service, "a rejected item", |s| {
        value(s, "conversa_kommo_webhook_items_rejected_total") >= 1.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaWebhookItemsRejected",
        (&s4, &s4, &s5),
    );

    // n8n is down and 21 customers write: their work waits.
    w.n8n.set_down(true);
    for c in 0..21u64 {
        says(&w, 5000 + c, &format!("wait-{c}")).await;
    }
    let s6 = scrape_until(&w.service, "a backlog", |s| {
        value(s, "conversa_outbox_pending_contacts") > 20.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaOutboxBacklog",
        (&s5, &s5, &s6),
    );
    scrape_until(&w.service, "the age of the oldest effect waiting", |s| {
        value(s, "conversa_outbox_oldest_seconds") >= 1.0
    })
    .await;

    // Kommo answers 429 for a while.
    w.kommo.fail_next("/api/v4/", 429, 40);
    let s7 = scrape_until(&w.service, "429s", |s| {
        value(s, r#"conversa_kommo_calls_total{status="429"}"#) > 10.0
    })
    .await;
    driven(
        &mut checked,
        &rules,
        "ConversaKommoRateLimited",
        (&s6, &s6, &s7),
    );

    // No go-live check can pass here (no reply channel): a customer would not be answered.
    let answered = rule(
        "ConversaCustomersNotAnswered",
        "conversa_customers_answered == 0",
    );
    let mut fine = s7.clone();
    for sample in &mut fine.samples {
        if sample.name == "conversa_customers_answered" {
            sample.value = 1.0;
        }
    }
    assert!(!answered.fires(&fine, &fine, 0.0));
    let s8 = scrape_until(&w.service, "the go-live gauge", |s| {
        !selector("conversa_customers_answered").values(s).is_empty()
    })
    .await;
    assert!(rules["ConversaCustomersNotAnswered"].fires(&s8, &s8, 0.0));
    checked.insert("ConversaCustomersNotAnswered".into());

    // The store goes away: requests needing it answer 503.
    let before = scrape(&w.service).await;
    drop(w.redis.take());
    for c in 0..30 {
        let (status, _) = w.service.get(&format!("/conversations/{}", 6000 + c)).await;
        assert_eq!(status, 503);
    }
    let s9 = scrape(&w.service).await;
    driven(
        &mut checked,
        &rules,
        "ConversaHttpErrors",
        (&before, &before, &s9),
    );

    // And conversa itself stops answering.
    w.service.terminate();
    let gone = scrape_of_nothing();
    driven(&mut checked, &rules, "ConversaDown", (&s9, &s9, &gone));

    assert_eq!(
        checked,
        [
            "ConversaCustomersNotAnswered",
            "ConversaDown",
            "ConversaEffectsDeadLettered",
            "ConversaHttpErrors",
            "ConversaKommoRateLimited",
            "ConversaMessagesMissed",
            "ConversaOutboxBacklog",
            "ConversaWebhookItemsRejected",
            "ConversaWebhookNotOk",
            "ConversaWebhookRepaired",
        ]
        .map(String::from)
        .into(),
    );
}

#[tokio::test]
async fn a_token_kommo_refuses_fires_its_alert() {
    let rules = rules();
    let w = world(&[]).await;
    let before = scrape_until(&w.service, "a first Kommo call", |s| {
        value(s, "conversa_gap_checks_total") >= 1.0
    })
    .await;
    w.kommo.expire_access_token();
    let after = scrape_until(&w.service, "re-authorisation needed", |s| {
        value(s, "conversa_kommo_reauthorize_needed") == 1.0
    })
    .await;
    let mut checked = BTreeSet::new();
    driven(
        &mut checked,
        &rules,
        "ConversaKommoReauthorizeNeeded",
        (&before, &before, &after),
    );
}

#[tokio::test]
async fn a_kommo_block_fires_its_alert_and_stalls_gap_detection() {
    let rules = rules();
    let w = world(&[]).await;
    let before = scrape_until(&w.service, "gap detection reading", |s| {
        value(s, "conversa_gap_checked_until_seconds") > 0.0
    })
    .await;
    w.kommo.set_blocked(true);
    let blocked = scrape_until(&w.service, "the block", |s| {
        value(s, "conversa_kommo_blocked") == 1.0
    })
    .await;
    let mut checked = BTreeSet::new();
    driven(
        &mut checked,
        &rules,
        "ConversaKommoBlocked",
        (&before, &before, &blocked),
    );

    // While blocked, looks fail and nothing advances: after 15 minutes of that, the alert.
    let first = ready(&w.service).await["gap_watch"]["checked_at"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = ready(&w.service).await["gap_watch"].clone();
        if g["checked_at"].as_u64().unwrap() >= first + 2 && g["state"] == "error" {
            break;
        }
        assert!(Instant::now() < deadline, "no failed look: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stalled = scrape(&w.service).await;
    assert_eq!(
        value(&stalled, "conversa_gap_checked_until_seconds"),
        value(&blocked, "conversa_gap_checked_until_seconds"),
        "nothing advanced while Kommo blocked"
    );
    let rule = &rules["ConversaGapDetectionStalled"];
    assert!(!rule.fires(&before, &before, 0.0), "fresh when reading");
    assert!(
        !rule.fires(&blocked, &stalled, 60.0),
        "a minute is not a stall"
    );
    assert!(rule.fires(&blocked, &stalled, 15.0 * 60.0), "{rule:?}");
}

#[test]
fn every_rule_is_driven_by_a_test_here() {
    // The names the tests above drive; a new rule must join one of them.
    let driven: BTreeSet<&str> = [
        "ConversaCustomersNotAnswered",
        "ConversaDown",
        "ConversaEffectsDeadLettered",
        "ConversaHttpErrors",
        "ConversaKommoRateLimited",
        "ConversaMessagesMissed",
        "ConversaOutboxBacklog",
        "ConversaWebhookItemsRejected",
        "ConversaWebhookNotOk",
        "ConversaWebhookRepaired",
        "ConversaKommoReauthorizeNeeded",
        "ConversaKommoBlocked",
        "ConversaGapDetectionStalled",
    ]
    .into();
    let all = rules();
    let names: BTreeSet<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(names, driven);
}

#[test]
fn the_evaluator_reads_the_exposition_format() {
    let s = Scrape {
        at: 100.0,
        up: true,
        samples: parse(
            "# HELP x y\nconversa_http_requests_total{route=\"/a\",status=\"503\"} 7\nconversa_http_requests_total{route=\"/a\",status=\"200\"} 9\nconversa_webhook_ok 1\n",
        ),
    };
    let base = Scrape {
        at: 90.0,
        up: true,
        samples: parse("conversa_http_requests_total{route=\"/a\",status=\"503\"} 2\n"),
    };
    assert_eq!(
        value(&s, r#"conversa_http_requests_total{status=~"5.."}"#),
        7.0
    );
    let r = rule(
        "R",
        r#"sum(rate(conversa_http_requests_total{status=~"5.."}[5m])) > 0.1"#,
    );
    assert!(r.fires(&base, &s, 0.0)); // 5 in 10 s
    let r = rule(
        "R",
        r#"sum(rate(conversa_http_requests_total{status=~"5.."}[5m])) > 1"#,
    );
    assert!(!r.fires(&base, &s, 0.0));
    assert!(!rule("R", "conversa_webhook_ok == 0").fires(&s, &s, 0.0));
}
