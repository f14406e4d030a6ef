//! `loadgen`: drives a running conversa engine with realistic Kommo webhooks and checks that
//! every acknowledged customer message reached n8n.
//!
//! # What it does
//!
//! 1. Starts an embedded **fake n8n** (an axum server on `127.0.0.1:<--sink-port>`) that
//!    answers every POST like an n8n Webhook node set to "respond immediately"
//!    (`200 {"message":"Workflow was started"}`), never calls back, and records each dispatch:
//!    its `dispatch_id`, its message ids and when it arrived. Start the engine with
//!    `N8N_WEBHOOK_URL=http://127.0.0.1:<sink-port>/webhook/conversa DEBOUNCE_MS=0` (the URL is
//!    printed at start; `--sink-port 9999` makes it fixed).
//! 2. With `--health-first` (the default), hammers the engine's `GET /health` with the same
//!    connections for the same duration: the HTTP limit of this process on this machine, with
//!    this load generator beside it.
//! 3. Sends `POST /webhooks/kommo` bodies shaped like Kommo's (form-encoded bracket keys, the
//!    WhatsApp Lite capture of docs/kommo.md, *Capture B*): one `message[add]` item each, for
//!    `--contacts` distinct contacts in turn, `--burst` messages in a row per contact, and a
//!    `--duplicates` fraction of requests that resend an already-acknowledged body (Kommo
//!    redelivers). `--connections` tasks share one pooled HTTP client; `--rate` requests/s in
//!    total, or as fast as possible with `--rate 0`.
//! 4. Waits up to `--drain` for the dispatches of every acknowledged message, then prints
//!    throughput (and its ratio to `/health`), HTTP latency percentiles, webhook → dispatch
//!    latency, errors by status, and the delivery check.
//!
//! # How the check counts
//!
//! A message is *acknowledged* when its webhook got a 2xx. With no reply from n8n, a newer
//! message for the same contact supersedes the dispatch in flight and the next dispatch carries
//! every message since the last delivered reply, so one message id legitimately appears in
//! several dispatches. A message counts in the **first** dispatch that contains it (that is
//! where its webhook → dispatch latency is measured); later appearances are reported as
//! "re-sent (superseded)". A `dispatch_id` received twice is a retry of the same dispatch and is
//! reported as a duplicate. *Missing* = acknowledged but in no dispatch by the end of the
//! drain: the exit code is then 1 (2 when nothing at all was acknowledged).
//!
//! # Measurement notes
//!
//! * Latencies are recorded in microseconds in HdrHistograms (3 significant digits).
//! * With `--rate R > 0` every request has a scheduled start (`start + i/R`) and its HTTP latency
//!   is measured from that scheduled time, not from when it was actually sent, so a stalled
//!   server is not hidden by the generator waiting for it (coordinated omission, as wrk2 does).
//!   Webhook → dispatch latency is always measured from the actual send.
//! * The load generator, its fake n8n and the engine share the machine's cores; this is why the
//!   webhook throughput is reported as a ratio to `/health` measured in the same run.
//! * Message ids are `lg-<run>-<contact>-<seq>` with `<run>` the start time in Unix seconds, and
//!   contact ids start from `--contact-base` (by default a base derived from the run id, so two
//!   runs against the same store never share a conversation).
//!
//! # Example
//!
//! ```sh
//! cargo run --release -p loadgen -- --url http://127.0.0.1:8000 --sink-port 9999 \
//!     --duration 10s --connections 64 --contacts 10000
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::{ArgAction, Parser};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::{Value, json};

/// Highest latency the histograms track (longer values are clamped): 5 minutes, in µs.
const MAX_LATENCY_US: u64 = 300_000_000;
/// How many acknowledged bodies each connection keeps for `--duplicates` resends.
const RESEND_RING: usize = 256;
/// How often the drain checks whether every acknowledged message was dispatched.
const DRAIN_POLL: Duration = Duration::from_millis(50);
/// How many missing messages are listed by id.
const SHOW_MISSING: usize = 10;
/// How many conversations of missing messages are fetched from the engine for diagnosis.
const DIAGNOSE_MISSING: usize = 3;
/// Longest accepted `--duration` / `--drain`: every loop here is bounded in time.
const MAX_PHASE: Duration = Duration::from_secs(3_600);

/// Texts a customer might write (Brazilian Portuguese, as in the real captures).
const TEXTS: [&str; 8] = [
    "Oi",
    "Boa tarde! Gostaria de saber mais sobre o processo de aposentadoria",
    "Qual o valor da consulta?",
    "Vocês atendem aos sábados?",
    "Preciso falar com um advogado sobre uma questão trabalhista, é urgente",
    "Obrigado! 😊",
    "Meu nome é Douglas, fui indicado pela Ana",
    "Pode me mandar o endereço do escritório, por favor?",
];

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for conversa: Kommo webhooks in, an embedded fake n8n out"
)]
struct Args {
    /// Base URL of the running engine.
    #[arg(long, env = "LOADGEN_URL", default_value = "http://127.0.0.1:8000")]
    url: String,
    /// Distinct contacts the messages are spread over (in turn).
    #[arg(long, env = "LOADGEN_CONTACTS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    contacts: u64,
    /// Concurrent connections (one task each, one pooled HTTP client).
    #[arg(long, env = "LOADGEN_CONNECTIONS", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// How long to send webhooks (and to measure /health): `10s`, `500ms`, `2m`.
    #[arg(long, env = "LOADGEN_DURATION", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Webhook requests per second in total; 0 = as fast as possible.
    #[arg(long, env = "LOADGEN_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    rate: f64,
    /// Fraction (0..1) of requests that resend an already-acknowledged message body.
    #[arg(long, env = "LOADGEN_DUPLICATES", default_value_t = 0.0, value_parser = parse_fraction)]
    duplicates: f64,
    /// Messages sent in a row to one contact before moving to the next.
    #[arg(long, env = "LOADGEN_BURST", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=1_000))]
    burst: u64,
    /// Port of the embedded fake n8n on 127.0.0.1; 0 = any free port.
    #[arg(long, env = "LOADGEN_SINK_PORT", default_value_t = 0)]
    sink_port: u16,
    /// Measure GET /health for the same duration and connections first (`--health-first false`
    /// to skip).
    #[arg(long, env = "LOADGEN_HEALTH_FIRST", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    health_first: bool,
    /// After sending, wait up to this long for the dispatches of acknowledged messages.
    #[arg(long, env = "LOADGEN_DRAIN", default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
    /// The engine's webhook secret, sent as `?token=`.
    #[arg(long, env = "LOADGEN_WEBHOOK_TOKEN")]
    webhook_token: Option<String>,
    /// The engine's API key, sent as a bearer token to protected endpoints (`/stats`,
    /// `/conversations/…`, used only for the closing diagnostics).
    #[arg(long, env = "LOADGEN_API_KEY")]
    api_key: Option<String>,
    /// Also print one JSON object with every result.
    #[arg(long, env = "LOADGEN_JSON")]
    json: bool,
    /// First contact id; 0 = derived from the run id so runs never share a conversation.
    #[arg(long, env = "LOADGEN_CONTACT_BASE", default_value_t = 0)]
    contact_base: u64,
    /// `account[id]` in the bodies (must match the engine's KOMMO_ACCOUNT_ID when that is set).
    #[arg(long, env = "LOADGEN_ACCOUNT_ID", default_value_t = 33_981_183)]
    account_id: u64,
    /// `account[subdomain]` in the bodies (must match the engine's subdomain when that is set).
    #[arg(
        long,
        env = "LOADGEN_SUBDOMAIN",
        default_value = "adrianocamposadvogado"
    )]
    subdomain: String,
    /// Timeout of one HTTP request to the engine.
    #[arg(long, env = "LOADGEN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

/// `10s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?}: want a duration such as 10s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1_000.0,
        "" | "s" | "sec" | "secs" => value,
        "m" | "min" | "mins" => value * 60.0,
        "h" => value * 3_600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    let d = Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))?;
    if d > MAX_PHASE {
        return Err(format!("{s:?}: at most {}s", MAX_PHASE.as_secs()));
    }
    Ok(d)
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?}: want a fraction between 0 and 1"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s:?}: want requests per second ≥ 0"))
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64*: enough randomness for picking duplicates, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// `850 µs`, `12.3 ms`, `1.20 s`.
fn human(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} s", us as f64 / 1_000_000.0)
    }
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean().round(),
    })
}

fn describe_percentiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        human(h.value_at_quantile(0.50)),
        human(h.value_at_quantile(0.90)),
        human(h.value_at_quantile(0.99)),
        human(h.value_at_quantile(0.999)),
        human(h.max()),
    )
}

fn describe_errors(statuses: &BTreeMap<String, u64>) -> String {
    if statuses.is_empty() {
        return "none".into();
    }
    statuses
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What became of one request: an HTTP status, or why there was none.
fn outcome_key(result: &Result<reqwest::StatusCode, reqwest::Error>) -> String {
    match result {
        Ok(status) => status.as_u16().to_string(),
        Err(e) if e.is_timeout() => "transport:timeout".into(),
        Err(e) if e.is_connect() => "transport:connect".into(),
        Err(e) if e.is_body() || e.is_decode() => "transport:body".into(),
        Err(_) => "transport:other".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Kommo bodies
// ---------------------------------------------------------------------------------------------

/// Builds `message[add][0]` bodies shaped like the WhatsApp Lite capture (docs/kommo.md, *Capture B*).
struct Bodies {
    run: u64,
    account_id: String,
    subdomain: String,
}

impl Bodies {
    fn message_id(run: u64, contact: u64, seq: u64) -> String {
        format!("lg-{run}-{contact}-{seq}")
    }

    /// A UUID-looking id derived from two numbers (stable per contact).
    fn uuidish(a: u64, b: u64) -> String {
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a as u32,
            (b >> 16) as u16,
            (b & 0xfff) as u16,
            (a >> 32) as u16 & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }

    fn body(&self, contact: u64, seq: u64) -> Bytes {
        let id = Self::message_id(self.run, contact, seq);
        let chat_id = Self::uuidish(contact, self.run);
        let author_id = Self::uuidish(contact.rotate_left(17), 0xd408_292e);
        let talk_id = (contact % 100_000 + 100).to_string();
        let lead_id = (contact + 5_000_000).to_string();
        let contact_id = contact.to_string();
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .to_string();
        let text = TEXTS[(seq % TEXTS.len() as u64) as usize];
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(1_024));
        form.append_pair("account[subdomain]", &self.subdomain)
            .append_pair("account[id]", &self.account_id)
            .append_pair(
                "account[_links][self]",
                &format!("https://{}.amocrm.com", self.subdomain),
            );
        let item = [
            ("id", id.as_str()),
            ("chat_id", chat_id.as_str()),
            ("talk_id", talk_id.as_str()),
            ("contact_id", contact_id.as_str()),
            ("text", text),
            ("created_at", created_at.as_str()),
            ("element_type", "2"),
            ("entity_type", "lead"),
            ("element_id", lead_id.as_str()),
            ("entity_id", lead_id.as_str()),
            ("type", "incoming"),
            ("author[id]", author_id.as_str()),
            ("author[type]", "external"),
            ("author[name]", "Douglas Augusto"),
            ("origin", "com.amocrm.amocrmwa"),
        ];
        for (field, value) in item {
            // `[` and `]` in the field name are percent-encoded, as Kommo sends them.
            let key = match field.split_once('[') {
                Some((head, tail)) => format!("message[add][0][{head}][{tail}"),
                None => format!("message[add][0][{field}]"),
            };
            form.append_pair(&key, value);
        }
        Bytes::from(form.finish())
    }
}

// ---------------------------------------------------------------------------------------------
// The fake n8n
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
struct DispatchBody {
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    dispatch_id: Option<String>,
    #[serde(default)]
    messages: Vec<DispatchMessage>,
}

#[derive(Deserialize)]
struct DispatchMessage {
    #[serde(default)]
    id: Option<String>,
}

/// What the fake n8n saw.
#[derive(Default)]
struct SinkState {
    /// `lg-<run>-`: message ids of this run start with it.
    prefix: String,
    dispatches: u64,
    dispatch_ids: HashSet<String>,
    /// Dispatch ids received more than once (a retry of the same dispatch).
    duplicate_dispatches: u64,
    duplicate_examples: Vec<String>,
    /// `Idempotency-Key` missing or different from the body's `dispatch_id`.
    bad_idempotency_key: u64,
    /// Message seq → arrival of the first dispatch that contained it.
    first_seen: HashMap<u64, Instant>,
    /// Message ids in dispatches after their first one (superseded dispatches re-send them).
    resent: u64,
    /// Message ids of other runs (or not made by loadgen).
    foreign: u64,
    /// Dispatches that carried no message of this run seen for the first time.
    no_new_message: u64,
    max_messages: usize,
    message_refs: u64,
    by_event: BTreeMap<String, u64>,
    unreadable: u64,
}

impl SinkState {
    /// The seq of a message id of this run, `None` for any other id.
    fn seq_of(&self, id: &str) -> Option<u64> {
        id.strip_prefix(self.prefix.as_str())?
            .rsplit_once('-')?
            .1
            .parse()
            .ok()
    }

    fn record(&mut self, headers: &HeaderMap, body: &[u8], at: Instant) {
        let Ok(dispatch) = serde_json::from_slice::<DispatchBody>(body) else {
            self.unreadable += 1;
            return;
        };
        self.dispatches += 1;
        *self
            .by_event
            .entry(dispatch.event.unwrap_or_else(|| "?".into()))
            .or_default() += 1;
        let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok());
        if key.is_none() || key != dispatch.dispatch_id.as_deref() {
            self.bad_idempotency_key += 1;
        }
        if let Some(id) = dispatch.dispatch_id
            && !self.dispatch_ids.insert(id.clone())
        {
            self.duplicate_dispatches += 1;
            if self.duplicate_examples.len() < SHOW_MISSING {
                self.duplicate_examples.push(id);
            }
        }
        self.max_messages = self.max_messages.max(dispatch.messages.len());
        self.message_refs += dispatch.messages.len() as u64;
        let mut new = 0;
        for m in &dispatch.messages {
            match m.id.as_deref().and_then(|id| self.seq_of(id)) {
                None => self.foreign += 1,
                Some(seq) => match self.first_seen.entry(seq) {
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(at);
                        new += 1;
                    }
                    std::collections::hash_map::Entry::Occupied(_) => self.resent += 1,
                },
            }
        }
        if new == 0 {
            self.no_new_message += 1;
        }
    }
}

type Sink = Arc<Mutex<SinkState>>;

async fn sink_handler(
    State(sink): State<Sink>,
    headers: HeaderMap,
    body: Bytes,
) -> impl axum::response::IntoResponse {
    let at = Instant::now();
    sink.lock().expect("sink lock").record(&headers, &body, at);
    (
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"message":"Workflow was started"}"#,
    )
}

/// Binds the fake n8n; every path answers, so a wrong path in N8N_WEBHOOK_URL still counts.
async fn start_sink(port: u16, prefix: String) -> anyhow::Result<(Sink, u16)> {
    let sink: Sink = Arc::new(Mutex::new(SinkState {
        prefix,
        ..SinkState::default()
    }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding the fake n8n on 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    let app = Router::new()
        .fallback(axum::routing::post(sink_handler))
        .with_state(sink.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("fake n8n stopped: {e}");
        }
    });
    Ok((sink, port))
}

// ---------------------------------------------------------------------------------------------
// Load phases
// ---------------------------------------------------------------------------------------------

/// What one connection measured.
struct TaskResult {
    latency: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    requests: u64,
    ok: u64,
    duplicate_requests: u64,
    /// `(seq, contact, sent at, acknowledged)` of every fresh message.
    sent: Vec<(u64, u64, Instant, bool)>,
    late_starts: u64,
}

impl TaskResult {
    fn new() -> Self {
        Self {
            latency: histogram(),
            statuses: BTreeMap::new(),
            requests: 0,
            ok: 0,
            duplicate_requests: 0,
            sent: Vec::new(),
            late_starts: 0,
        }
    }

    fn merge(&mut self, other: TaskResult) {
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.requests += other.requests;
        self.ok += other.ok;
        self.duplicate_requests += other.duplicate_requests;
        self.sent.extend(other.sent);
        self.late_starts += other.late_starts;
    }

    /// Sends one request and records its status and latency (from `scheduled`).
    async fn send(&mut self, request: reqwest::RequestBuilder, scheduled: Instant) -> bool {
        let result = match request.send().await {
            // Read the body so the connection goes back to the pool.
            Ok(r) => {
                let status = r.status();
                r.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        self.latency.saturating_record(micros(scheduled.elapsed()));
        self.requests += 1;
        let ok = matches!(&result, Ok(s) if s.is_success());
        if ok {
            self.ok += 1;
        }
        *self.statuses.entry(outcome_key(&result)).or_default() += 1;
        ok
    }
}

/// A phase's shared clock: the deadline and, with a rate, the schedule of request starts.
struct Schedule {
    start: Instant,
    deadline: Instant,
    /// Seconds between two request starts (over all connections); 0 = as fast as possible.
    interval: f64,
    next_slot: AtomicU64,
}

impl Schedule {
    fn new(duration: Duration, rate: f64) -> Self {
        let start = Instant::now();
        Self {
            start,
            deadline: start + duration,
            interval: if rate > 0.0 { 1.0 / rate } else { 0.0 },
            next_slot: AtomicU64::new(0),
        }
    }

    /// Waits for this connection's next turn; `None` once the phase is over. Returns when the
    /// request should have started (for latency) and whether it is starting late.
    async fn next(&self) -> Option<(Instant, bool)> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        if self.interval == 0.0 {
            return Some((now, false));
        }
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let at = self.start + Duration::from_secs_f64(slot as f64 * self.interval);
        if at >= self.deadline {
            return None;
        }
        if at > now {
            tokio::time::sleep_until(at.into()).await;
            Some((at, false))
        } else {
            // More than 1 ms behind schedule counts as a late start.
            Some((at, now.duration_since(at) > Duration::from_millis(1)))
        }
    }
}

/// The /health phase: GET as fast as possible on every connection until the deadline.
async fn health_phase(
    client: &reqwest::Client,
    args: &Args,
) -> anyhow::Result<(TaskResult, Duration)> {
    let url = format!("{}/health", args.url.trim_end_matches('/'));
    let schedule = Arc::new(Schedule::new(args.duration, 0.0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let client = client.clone();
        let url = url.clone();
        let schedule = schedule.clone();
        tasks.spawn(async move {
            let mut result = TaskResult::new();
            while let Some((scheduled, _)) = schedule.next().await {
                result.send(client.get(&url), scheduled).await;
            }
            result
        });
    }
    let mut total = TaskResult::new();
    while let Some(done) = tasks.join_next().await {
        total.merge(done.context("a /health task panicked")?);
    }
    Ok((total, schedule.start.elapsed()))
}

/// Where the webhook phase's connections take their work from.
struct Work {
    schedule: Schedule,
    bodies: Bodies,
    url: String,
    contact_base: u64,
    contacts: u64,
    burst: u64,
    duplicates: f64,
    next_contact: AtomicU64,
    next_seq: AtomicU64,
}

async fn webhook_task(client: reqwest::Client, work: Arc<Work>, seed: u64) -> TaskResult {
    let mut result = TaskResult::new();
    let mut rng = Rng::new(seed);
    let mut ring: Vec<Bytes> = Vec::with_capacity(RESEND_RING);
    let mut ring_next = 0;
    let post = |body: Bytes| {
        client
            .post(&work.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::USER_AGENT, "amoCRM-WebHook-client/1.0")
            .body(body)
    };
    'outer: loop {
        if work.duplicates > 0.0 && !ring.is_empty() && rng.unit() < work.duplicates {
            let Some((scheduled, late)) = work.schedule.next().await else {
                break;
            };
            result.late_starts += u64::from(late);
            let body = ring[(rng.next() % ring.len() as u64) as usize].clone();
            result.duplicate_requests += 1;
            result.send(post(body), scheduled).await;
            continue;
        }
        let contact =
            work.contact_base + work.next_contact.fetch_add(1, Ordering::Relaxed) % work.contacts;
        for _ in 0..work.burst {
            let Some((scheduled, late)) = work.schedule.next().await else {
                break 'outer;
            };
            result.late_starts += u64::from(late);
            let seq = work.next_seq.fetch_add(1, Ordering::Relaxed);
            let body = work.bodies.body(contact, seq);
            let sent_at = Instant::now();
            let ok = result.send(post(body.clone()), scheduled).await;
            result.sent.push((seq, contact, sent_at, ok));
            if ok && work.duplicates > 0.0 {
                if ring.len() < RESEND_RING {
                    ring.push(body);
                } else {
                    ring[ring_next] = body;
                    ring_next = (ring_next + 1) % RESEND_RING;
                }
            }
        }
    }
    result
}

async fn webhook_phase(
    client: &reqwest::Client,
    args: &Args,
    run: u64,
    contact_base: u64,
) -> anyhow::Result<(TaskResult, Duration)> {
    let mut url = format!("{}/webhooks/kommo", args.url.trim_end_matches('/'));
    if let Some(token) = &args.webhook_token {
        url.push_str("?token=");
        url.extend(form_urlencoded::byte_serialize(token.as_bytes()));
    }
    let work = Arc::new(Work {
        schedule: Schedule::new(args.duration, args.rate),
        bodies: Bodies {
            run,
            account_id: args.account_id.to_string(),
            subdomain: args.subdomain.clone(),
        },
        url,
        contact_base,
        contacts: args.contacts,
        burst: args.burst,
        duplicates: args.duplicates,
        next_contact: AtomicU64::new(0),
        next_seq: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        tasks.spawn(webhook_task(client.clone(), work.clone(), run ^ (i + 1)));
    }
    let mut total = TaskResult::new();
    while let Some(done) = tasks.join_next().await {
        total.merge(done.context("a webhook task panicked")?);
    }
    Ok((total, work.schedule.start.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Fetches a JSON document from the engine for the closing diagnostics (best effort).
async fn fetch_json(client: &reqwest::Client, url: String, api_key: Option<&str>) -> Option<Value> {
    let mut request = client.get(url);
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?;
    let run = started_unix.as_secs();
    let contact_base = match args.contact_base {
        0 => 1_000_000_000 + (run % 1_000_000) * 1_000_000,
        base => base,
    };
    if contact_base.checked_add(args.contacts).is_none() {
        bail!("--contact-base + --contacts overflows");
    }
    let base = args.url.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections as usize)
        .timeout(args.timeout)
        .connect_timeout(args.timeout)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;

    let (sink, sink_port) = start_sink(args.sink_port, format!("lg-{run}-")).await?;
    let sink_url = format!("http://127.0.0.1:{sink_port}/webhook/conversa");
    let rate_text = if args.rate > 0.0 {
        format!("{} req/s", args.rate)
    } else {
        "as fast as possible".into()
    };
    println!(
        "loadgen run {run} → {base}: {} connections, {} contacts (ids {contact_base}..), {:?}, \
         {rate_text}, burst {}, duplicates {:.2}",
        args.connections, args.contacts, args.duration, args.burst, args.duplicates
    );
    println!("fake n8n listening: start the engine with N8N_WEBHOOK_URL={sink_url} DEBOUNCE_MS=0");

    // The engine must be up before anything is measured.
    let health_url = format!("{base}/health");
    match client.get(&health_url).send().await {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => bail!("{health_url} answered {}", r.status()),
        Err(e) => bail!("{health_url} unreachable: {e}"),
    }

    let health = if args.health_first {
        let (h, elapsed) = health_phase(&client, &args).await?;
        let rps = rate(h.ok, elapsed);
        println!(
            "/health      {rps:>9.0} req/s  ({} ok in {:.2} s); latency {}; errors: {}",
            h.ok,
            elapsed.as_secs_f64(),
            describe_percentiles(&h.latency),
            describe_errors(&non_2xx(&h.statuses)),
        );
        Some((h, elapsed, rps))
    } else {
        None
    };

    let (web, elapsed) = webhook_phase(&client, &args, run, contact_base).await?;
    let send_done = Instant::now();
    let web_rps = rate(web.ok, elapsed);
    let ratio = health.as_ref().filter(|h| h.2 > 0.0).map(|h| web_rps / h.2);
    let fresh = web.sent.len() as u64;
    println!(
        "webhooks     {web_rps:>9.0} req/s  ({} ok of {} requests in {:.2} s: {fresh} new \
         messages, {} duplicate resends){}",
        web.ok,
        web.requests,
        elapsed.as_secs_f64(),
        web.duplicate_requests,
        match ratio {
            Some(r) => format!("; ratio to /health {r:.3}"),
            None => String::new(),
        }
    );
    let latency_from = if args.rate > 0.0 {
        " (from scheduled start)"
    } else {
        ""
    };
    println!(
        "  HTTP latency{latency_from}: {}",
        describe_percentiles(&web.latency)
    );
    println!("  statuses: {}", describe_errors(&web.statuses));
    if args.rate > 0.0 {
        println!(
            "  late starts (> 1 ms behind schedule): {}",
            web.late_starts
        );
    }

    // Drain: wait until every acknowledged message was seen in a dispatch, or the drain ends.
    let mut waiting: Vec<(u64, u64, Instant)> = web
        .sent
        .iter()
        .filter(|s| s.3)
        .map(|s| (s.0, s.1, s.2))
        .collect();
    let acknowledged = waiting.len() as u64;
    let drain_deadline = send_done + args.drain;
    let mut dispatch_latency = histogram();
    loop {
        {
            let state = sink.lock().expect("sink lock");
            waiting.retain(|(seq, _, sent)| match state.first_seen.get(seq) {
                Some(at) => {
                    dispatch_latency.saturating_record(micros(at.saturating_duration_since(*sent)));
                    false
                }
                None => true,
            });
        }
        if waiting.is_empty() || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let drained_in = send_done.elapsed();
    let missing = waiting;

    // What the fake n8n saw by the end of the drain (later arrivals are not counted).
    let state = std::mem::take(&mut *sink.lock().expect("sink lock"));
    let acked: HashSet<u64> = web.sent.iter().filter(|s| s.3).map(|s| s.0).collect();
    let dispatched_unacked = state
        .first_seen
        .keys()
        .filter(|seq| !acked.contains(seq))
        .count();
    println!(
        "webhook→dispatch latency (first dispatch with the message): {}",
        describe_percentiles(&dispatch_latency)
    );
    println!(
        "dispatches   {} received ({:.0}/s over send + drain; events: {}), {} message ids \
         (max {} per dispatch), {} re-sent in later dispatches (superseded), {} with no new \
         message, {} foreign ids, {} unreadable bodies, {} without a matching Idempotency-Key",
        state.dispatches,
        rate(state.dispatches, elapsed + drained_in),
        describe_errors(&state.by_event),
        state.message_refs,
        state.max_messages,
        state.resent,
        state.no_new_message,
        state.foreign,
        state.unreadable,
        state.bad_idempotency_key,
    );
    println!(
        "duplicate dispatch_ids (same dispatch received again): {}{}",
        state.duplicate_dispatches,
        if state.duplicate_examples.is_empty() {
            String::new()
        } else {
            format!(" e.g. {}", state.duplicate_examples.join(", "))
        }
    );
    let verdict = if acknowledged == 0 {
        "FAIL (nothing acknowledged)"
    } else if missing.is_empty() {
        "OK"
    } else {
        "FAIL (acknowledged messages missing)"
    };
    println!(
        "check        acknowledged {acknowledged}, dispatched {}, missing {} (drain waited \
         {:.2} s), dispatched but not acknowledged {dispatched_unacked} → {verdict}",
        acknowledged - missing.len() as u64,
        missing.len(),
        drained_in.as_secs_f64(),
    );
    let missing_ids: Vec<String> = missing
        .iter()
        .take(SHOW_MISSING)
        .map(|(seq, contact, _)| Bodies::message_id(run, *contact, *seq))
        .collect();
    if !missing.is_empty() {
        println!(
            "  missing, first {}: {}",
            missing_ids.len(),
            missing_ids.join(", ")
        );
        if acknowledged == missing.len() as u64 && state.dispatches == 0 {
            println!(
                "  no dispatch arrived at all: is the engine's N8N_WEBHOOK_URL {sink_url} and \
                 DEBOUNCE_MS=0?"
            );
        }
    }
    let sink_summary = json!({
        "dispatches": state.dispatches,
        "by_event": state.by_event,
        "message_refs": state.message_refs,
        "max_messages_per_dispatch": state.max_messages,
        "resent_in_later_dispatches": state.resent,
        "dispatches_without_new_message": state.no_new_message,
        "foreign_message_ids": state.foreign,
        "unreadable_bodies": state.unreadable,
        "bad_idempotency_key": state.bad_idempotency_key,
        "duplicate_dispatch_ids": state.duplicate_dispatches,
        "duplicate_dispatch_id_examples": state.duplicate_examples,
    });

    // Closing diagnostics: the engine's view of a few conversations with missing messages.
    let api_key = args.api_key.as_deref();
    let mut diagnosed = Vec::new();
    let mut contacts_seen = HashSet::new();
    for (_, contact, _) in &missing {
        if diagnosed.len() >= DIAGNOSE_MISSING || !contacts_seen.insert(*contact) {
            continue;
        }
        let view = fetch_json(&client, format!("{base}/conversations/{contact}"), api_key).await;
        let text = view.as_ref().map_or_else(
            || "(not readable: pass --api-key if the engine has one)".into(),
            |v| {
                let s = v.to_string();
                match s.char_indices().nth(2_000) {
                    Some((cut, _)) => format!("{}…", &s[..cut]),
                    None => s,
                }
            },
        );
        println!("  engine's conversation {contact}: {text}");
        diagnosed.push(json!({ "contact_id": contact, "conversation": view }));
    }
    let stats = fetch_json(&client, format!("{base}/stats"), api_key).await;
    if let Some(s) = &stats {
        println!(
            "engine /stats: outbox_pending_contacts {}, effects {}, active_actors {}",
            s["outbox_pending_contacts"], s["effects"], s["active_actors"]
        );
    }

    if args.json {
        let health_json = health.as_ref().map(|(h, elapsed, rps)| {
            json!({
                "requests": h.requests,
                "ok": h.ok,
                "elapsed_s": elapsed.as_secs_f64(),
                "req_per_s": rps,
                "latency": percentiles(&h.latency),
                "statuses": h.statuses,
            })
        });
        let report = json!({
            "run": run,
            "args": {
                "url": base,
                "contacts": args.contacts,
                "contact_base": contact_base,
                "connections": args.connections,
                "duration_s": args.duration.as_secs_f64(),
                "rate": args.rate,
                "duplicates": args.duplicates,
                "burst": args.burst,
                "drain_s": args.drain.as_secs_f64(),
            },
            "sink_url": sink_url,
            "health": health_json,
            "webhooks": {
                "requests": web.requests,
                "ok": web.ok,
                "new_messages": fresh,
                "duplicate_requests": web.duplicate_requests,
                "elapsed_s": elapsed.as_secs_f64(),
                "req_per_s": web_rps,
                "ratio_to_health": ratio,
                "latency": percentiles(&web.latency),
                "latency_from_schedule": args.rate > 0.0,
                "late_starts": web.late_starts,
                "statuses": web.statuses,
            },
            "dispatch_latency": percentiles(&dispatch_latency),
            "sink": sink_summary,
            "check": {
                "acknowledged": acknowledged,
                "dispatched": acknowledged - missing.len() as u64,
                "missing": missing.len(),
                "missing_examples": missing_ids,
                "dispatched_not_acknowledged": dispatched_unacked,
                "drain_waited_s": drained_in.as_secs_f64(),
                "ok": acknowledged > 0 && missing.is_empty(),
            },
            "diagnosis": diagnosed,
            "engine_stats": stats,
        });
        println!("{report}");
    }

    Ok(if acknowledged == 0 {
        ExitCode::from(2)
    } else if !missing.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The statuses that are not 2xx.
fn non_2xx(statuses: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    statuses
        .iter()
        .filter(|(k, _)| !k.starts_with('2'))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn bodies_parse_as_kommo_messages() {
        let bodies = Bodies {
            run: 1_736_447_224,
            account_id: "33981183".into(),
            subdomain: "adrianocamposadvogado".into(),
        };
        let body = bodies.body(1_000_042, 7);
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("message%5Badd%5D%5B0%5D%5Bid%5D=lg-1736447224-1000042-7"));
        assert!(text.contains("message%5Badd%5D%5B0%5D%5Bauthor%5D%5Bname%5D=Douglas+Augusto"));
        let hook = conversa::kommo::webhook::parse_form(&body).unwrap();
        assert_eq!(hook.events.len(), 1);
        let conversa::kommo::webhook::WebhookEvent::Message(m) = &hook.events[0] else {
            panic!("not a message: {:?}", hook.events[0]);
        };
        assert_eq!(m.id, "lg-1736447224-1000042-7");
        assert_eq!(m.contact_id, 1_000_042);
        assert_eq!(m.lead_id, Some(6_000_042));
        assert_eq!(m.origin.as_deref(), Some("com.amocrm.amocrmwa"));
    }

    #[test]
    fn sink_counts_first_dispatch_and_duplicates() {
        let mut s = SinkState {
            prefix: "lg-5-".into(),
            ..SinkState::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", "0-9-1".parse().unwrap());
        let at = Instant::now();
        let body = br#"{"event":"message","dispatch_id":"0-9-1","messages":[{"id":"lg-5-9-1"},{"id":"x"}]}"#;
        s.record(&headers, body, at);
        s.record(&headers, body, at);
        assert_eq!(s.dispatches, 2);
        assert_eq!(s.duplicate_dispatches, 1);
        assert_eq!(s.first_seen.len(), 1);
        assert_eq!(s.resent, 1);
        assert_eq!(s.foreign, 2);
        assert_eq!(s.no_new_message, 1);
        assert_eq!(s.bad_idempotency_key, 0);
    }
}
