//! End to end against a real n8n: the example workflow (`examples/n8n/workflow.json`) answers
//! conversa's dispatches through `/send-response`, as a production AI workflow does.
//!
//! Opt-in, because the first run installs n8n from npm (a few minutes, about 2.3 GB):
//!
//! ```sh
//! N8N_E2E=1 cargo test --test n8n_e2e -- --nocapture
//! ```
//!
//! `examples/n8n/setup.sh` installs n8n into `$N8N_INSTALL_DIR` (default `target/n8n`, reused by
//! later runs), `start.sh` starts it on a free loopback port with its state in a temp dir, and a
//! guard runs `stop.sh` when the test ends, passed or failed. The conversation: a customer
//! message answered, a second one answered after the first reply was accepted, a pause and a
//! resume (n8n is told `released` and must not answer it), a third message that is answered
//! (which also shows the `released` execution stayed silent), then a few one-message contacts
//! for timings. Every wait polls with a deadline.
//!
//! The second test runs `examples/n8n/ai-agent.json` (n8n's AI Agent with an OpenAI-compatible
//! chat model) against a fake chat-completions server this test starts on loopback: it answers
//! a canned completion and records each prompt, so the test checks that the prompt carries the
//! customer's messages (and, the second time, the first exchange: memory per contact), that a
//! signed dispatch is answered and the reply reaches conversa, and that the scheduling outcome
//! arrives structured.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::service::Service;

/// The token the example workflow sends as `Authorization: Bearer …` (fixed in workflow.json).
const CALLBACK_TOKEN: &str = "e2e-callback-token";
/// Longest wait for one reply (n8n's HTTP Request node times out after 10 s).
const REPLY_DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/n8n")
}

fn free_port_pair() -> u16 {
    // n8n takes PORT and its task-runner broker PORT+1.
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A running n8n; dropping it stops it (and shows its log when the test is failing).
struct N8n {
    state: tempfile::TempDir,
    webhook_url: String,
}

impl N8n {
    fn install() -> PathBuf {
        let dir = std::env::var_os("N8N_INSTALL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/n8n"));
        let t = Instant::now();
        let status = Command::new(examples_dir().join("setup.sh"))
            .arg(&dir)
            .stdin(Stdio::null())
            .status()
            .expect("run examples/n8n/setup.sh");
        assert!(status.success(), "setup.sh failed: {status}");
        eprintln!(
            "[e2e] n8n installed in {dir:?} ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
        dir
    }

    fn start(install: &Path) -> N8n {
        Self::start_with(install, &[])
    }

    /// With extra environment for start.sh (`N8N_WORKFLOW`, `N8N_CREDENTIALS`).
    fn start_with(install: &Path, env: &[(&str, String)]) -> N8n {
        let mut n8n = N8n {
            state: tempfile::Builder::new()
                .prefix("n8n-e2e")
                .tempdir()
                .unwrap(),
            webhook_url: String::new(),
        };
        let port = free_port_pair();
        let t = Instant::now();
        // The guard exists before n8n does: a failure from here on still stops it.
        let out = Command::new(examples_dir().join("start.sh"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .arg(install)
            .arg(n8n.state.path())
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("run examples/n8n/start.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprint!("{stdout}");
        assert!(out.status.success(), "start.sh failed: {}", out.status);
        n8n.webhook_url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WEBHOOK_URL="))
            .expect("start.sh prints WEBHOOK_URL=")
            .to_owned();
        eprintln!(
            "[e2e] n8n up at {} in {:.1} s",
            n8n.webhook_url,
            t.elapsed().as_secs_f64()
        );
        n8n
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("n8n.log")).unwrap_or_default()
    }
}

impl Drop for N8n {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<_> = log.lines().rev().take(60).collect();
            eprintln!("--- n8n.log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = Command::new(examples_dir().join("stop.sh"))
            .arg(self.state.path())
            .stdin(Stdio::null())
            .status();
    }
}

async fn conversation(s: &Service, contact: u64) -> Value {
    let (status, c) = s.get(&format!("/conversations/{contact}")).await;
    assert_eq!(status, 200, "{c}");
    c
}

fn timeline(c: &Value) -> &[Value] {
    c["timeline"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn entry<'a>(c: &'a Value, what: &str, dispatch_id: &str) -> Option<&'a Value> {
    timeline(c)
        .iter()
        .find(|e| e["what"] == what && e["dispatch_id"] == dispatch_id)
}

/// Polls `contact`'s conversation until `found` returns something, or panics at the deadline
/// with the conversation and the service log.
async fn wait_until<T>(
    s: &Service,
    contact: u64,
    what: &str,
    found: impl Fn(&Value) -> Option<T>,
) -> (T, Value) {
    let deadline = Instant::now() + REPLY_DEADLINE;
    loop {
        let c = conversation(s, contact).await;
        if let Some(t) = found(&c) {
            return (t, c);
        }
        assert!(
            Instant::now() < deadline,
            "no {what} for contact {contact} within {REPLY_DEADLINE:?}:\n{c:#}\n--- conversa log ---\n{}",
            s.log()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// One customer message answered by n8n.
struct Answered {
    dispatch_id: String,
    /// POST /webhooks/kommo sent → `reply_accepted` seen by polling (every 5 ms).
    observed: Duration,
    /// `message_in` → `reply_accepted`, both stamped by the service (ms).
    service_ms: u64,
}

/// The customer writes `text`; waits until n8n's reply to the dispatch that carried it is
/// accepted, and checks the chain message_in → dispatch_queued → dispatch_sent →
/// reply_accepted.
async fn say_and_wait_reply(s: &Service, contact: u64, id: &str, text: &str) -> Answered {
    let t0 = Instant::now();
    s.customer_says(contact, id, text).await;
    let ((dispatch_id, service_ms), c) = wait_until(s, contact, "reply_accepted", |c| {
        let tl = timeline(c);
        let i = tl
            .iter()
            .position(|e| e["what"] == "message_in" && e["message_id"] == id)?;
        let queued = tl[i..]
            .iter()
            .find(|e| e["what"] == "dispatch_queued" && e["detail"] == "message")?;
        let dispatch_id = queued["dispatch_id"].as_str()?.to_owned();
        let accepted = entry(c, "reply_accepted", &dispatch_id)?;
        let ms = accepted["at"].as_u64()? - tl[i]["at"].as_u64()?;
        Some((dispatch_id, ms))
    })
    .await;
    let observed = t0.elapsed();
    assert!(
        entry(&c, "dispatch_sent", &dispatch_id).is_some(),
        "the dispatch went to n8n: {c:#}"
    );
    assert!(
        entry(&c, "reply_dropped", &dispatch_id).is_none(),
        "one reply per dispatch: {c:#}"
    );
    eprintln!(
        "[e2e] contact {contact} {id}: dispatch {dispatch_id} answered, {service_ms} ms in the service, {:.1} ms observed",
        observed.as_secs_f64() * 1e3
    );
    Answered {
        dispatch_id,
        observed,
        service_ms,
    }
}

fn replies_waiting(c: &Value) -> usize {
    c["outbox"].as_array().map_or(0, |o| {
        o.iter().filter(|e| e["kind"] == "deliver_reply").count()
    })
}

async fn bot_control(s: &Service, contact: u64, command: &str) -> Value {
    let (status, r) = s
        .post(
            "/bot-control",
            json!({"contact_id": contact, "command": command}),
        )
        .await;
    assert_eq!(status, 200, "{command}: {r}");
    r
}

fn median_max(mut xs: Vec<f64>) -> (f64, f64) {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    (median, xs[n - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_n8n_answers_through_the_callback_and_stays_silent_on_released() {
    if std::env::var("N8N_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set N8N_E2E=1 to run against a real n8n (installs it from npm)");
        return;
    }
    let install = tokio::task::spawn_blocking(N8n::install).await.unwrap();
    let n8n = tokio::task::spawn_blocking(move || N8n::start(&install))
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.webhook_url),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("N8N_CALLBACK_TOKEN", CALLBACK_TOKEN),
    ])
    .await;
    let contact = 1_298_200;
    let mut answered = Vec::new();

    // Two customer messages, the second once the first reply is accepted.
    let a1 = say_and_wait_reply(&s, contact, "e2e-m1", "Quero saber do meu benefício").await;
    let a2 = say_and_wait_reply(&s, contact, "e2e-m2", "É aposentadoria por idade").await;
    assert_ne!(a1.dispatch_id, a2.dispatch_id);
    answered.extend([a1, a2]);
    // Accepted replies wait in the outbox for delivery (Kommo is not configured here).
    assert_eq!(replies_waiting(&conversation(&s, contact).await), 2);

    // Pause, then resume: n8n gets `released` and must not answer it.
    assert_eq!(bot_control(&s, contact, "pause").await["phase"], "paused");
    assert_eq!(
        bot_control(&s, contact, "resume").await["phase"],
        "bot_active"
    );
    let (released, _) = wait_until(&s, contact, "released dispatch sent", |c| {
        let tl = timeline(c);
        let i = tl.iter().rposition(|e| e["what"] == "resumed")?;
        let queued = tl[i..]
            .iter()
            .find(|e| e["what"] == "dispatch_queued" && e["detail"] == "released")?;
        let id = queued["dispatch_id"].as_str()?.to_owned();
        // dispatch_sent: n8n answered the webhook, its execution has started.
        entry(c, "dispatch_sent", &id).map(|_| id)
    })
    .await;
    eprintln!("[e2e] released dispatch {released} delivered to n8n");

    // A later message is answered: the bot speaks again after resume, and by the time this
    // execution (started after the `released` one) has called back, that one has finished
    // without calling back.
    let a3 = say_and_wait_reply(&s, contact, "e2e-m3", "Voltei, alguém aí?").await;
    let c = conversation(&s, contact).await;
    for what in ["reply_accepted", "reply_dropped"] {
        assert!(
            entry(&c, what, &released).is_none(),
            "n8n answered the released dispatch: {c:#}"
        );
    }
    // The pause cancelled the two undelivered replies (the bot must not speak while paused):
    // only the third waits.
    assert_eq!(replies_waiting(&c), 1, "{c:#}");
    answered.push(a3);

    // A few more one-message conversations, for timings.
    let rounds: u64 = std::env::var("N8N_E2E_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for i in 0..rounds {
        let contact = 2_000_000 + i;
        answered
            .push(say_and_wait_reply(&s, contact, &format!("e2e-t{i}"), &format!("Olá {i}")).await);
    }

    let first = &answered[0];
    let (obs_med, obs_max) = median_max(
        answered[1..]
            .iter()
            .map(|a| a.observed.as_secs_f64() * 1e3)
            .collect(),
    );
    let (svc_med, svc_max) =
        median_max(answered[1..].iter().map(|a| a.service_ms as f64).collect());
    eprintln!(
        "[e2e] webhook -> reply_accepted: first {:.1} ms observed ({} ms in the service); \
         then n={}: observed median {obs_med:.1} ms, max {obs_max:.1} ms; \
         in the service median {svc_med:.0} ms, max {svc_max:.0} ms",
        first.observed.as_secs_f64() * 1e3,
        first.service_ms,
        answered.len() - 1
    );
    drop(s);
    drop(n8n);
}

/// A fake OpenAI-compatible server: `POST /v1/chat/completions` answers one canned completion
/// (a JSON outcome when the prompt is a scheduling request) and keeps every request body.
struct FakeLlm {
    url: String,
    prompts: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    server: tokio::task::JoinHandle<()>,
}

/// What the fake model says.
const CANNED: &str = "Olá! Sou o assistente. Posso ajudar com a sua aposentadoria.";

impl FakeLlm {
    async fn start() -> FakeLlm {
        use axum::{Json, Router, extract::State, routing::post};
        type Prompts = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;
        async fn complete(State(prompts): State<Prompts>, Json(body): Json<Value>) -> Json<Value> {
            let last = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_owned();
            prompts.lock().unwrap().push(body);
            let content = if last.contains("AGENDAMENTO") {
                json!({"status": "confirmed", "when": "amanhã às 10h", "text": "Agendado para amanhã às 10h!"}).to_string()
            } else {
                CANNED.to_owned()
            };
            Json(json!({
                "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_767_225_600,
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
            }))
        }
        let prompts: Prompts = Default::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(prompts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm {
            url,
            prompts,
            server,
        }
    }

    fn prompts(&self) -> Vec<Value> {
        self.prompts.lock().unwrap().clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The text of a prompt's messages, in order.
fn contents(prompt: &Value) -> Vec<String> {
    prompt["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| m["content"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ai_agent_workflow_answers_with_the_model_and_remembers_the_contact() {
    if std::env::var("N8N_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set N8N_E2E=1 to run against a real n8n (installs it from npm)");
        return;
    }
    const SECRET: &str = "e2e-shared-secret-0123456789";
    let llm = FakeLlm::start().await;
    let creds = tempfile::NamedTempFile::new().unwrap();
    let template =
        std::fs::read_to_string(examples_dir().join("ai-agent.credentials.example.json"))
            .expect("the credentials template");
    let mut credentials: Value = serde_json::from_str(&template).unwrap();
    for c in credentials.as_array_mut().unwrap() {
        match c["type"].as_str().unwrap() {
            "openAiApi" => c["data"] = json!({"apiKey": "fake-key", "url": llm.url}),
            "httpHeaderAuth" => {
                c["data"] =
                    json!({"name": "Authorization", "value": format!("Bearer {CALLBACK_TOKEN}")})
            }
            "crypto" => c["data"] = json!({"hmacSecret": SECRET}),
            other => panic!("unexpected credential type {other}"),
        }
    }
    std::fs::write(creds.path(), credentials.to_string()).unwrap();
    let env = vec![
        (
            "N8N_WORKFLOW",
            examples_dir().join("ai-agent.json").display().to_string(),
        ),
        ("N8N_CREDENTIALS", creds.path().display().to_string()),
    ];
    let install = tokio::task::spawn_blocking(N8n::install).await.unwrap();
    let n8n = tokio::task::spawn_blocking(move || N8n::start_with(&install, &env))
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let s = Service::start(&[
        ("DATA_DIR", data.path().to_str().unwrap()),
        ("DEBOUNCE_MS", "0"),
        ("N8N_WEBHOOK_URL", &n8n.webhook_url),
        ("PUBLIC_URL", "http://127.0.0.1:{port}"),
        ("N8N_CALLBACK_TOKEN", CALLBACK_TOKEN),
        ("N8N_SHARED_SECRET", SECRET),
    ])
    .await;
    let contact = 1_298_400;

    let first = "Oi, quero saber sobre aposentadoria por idade";
    let a1 = say_and_wait_reply(&s, contact, "ai-m1", first).await;
    let prompts = llm.prompts();
    assert_eq!(prompts.len(), 1, "one model call per dispatch");
    let texts = contents(&prompts[0]);
    assert!(
        texts.last().is_some_and(|t| t.contains(first)),
        "the prompt carries the customer's message: {texts:#?}"
    );

    let second = "Tenho 64 anos e contribuí por 20";
    let a2 = say_and_wait_reply(&s, contact, "ai-m2", second).await;
    let prompts = llm.prompts();
    let texts = contents(&prompts[1]);
    assert!(
        texts.last().is_some_and(|t| t.contains(second)),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.contains(first)) && texts.iter().any(|t| t == CANNED),
        "the second prompt remembers the first exchange (memory keyed by contact): {texts:#?}"
    );
    // Another contact starts with no memory.
    let other = 1_298_401;
    say_and_wait_reply(&s, other, "ai-o1", "Bom dia").await;
    let texts = contents(&llm.prompts()[2]);
    assert!(!texts.iter().any(|t| t.contains(first)), "{texts:#?}");

    eprintln!(
        "[e2e] ai-agent: first reply {:.0} ms observed ({} ms in the service), second {:.0} ms ({} ms)",
        a1.observed.as_secs_f64() * 1e3,
        a1.service_ms,
        a2.observed.as_secs_f64() * 1e3,
        a2.service_ms
    );
    drop(s);
    drop(n8n);
}
