//! A faithful fake of an n8n production webhook, for tests that must not need a real n8n.
//!
//! It behaves like a workflow whose Webhook node (POST, path `conversa`) is set to respond
//! immediately: `POST /webhook/conversa` answers `200 {"message":"Workflow was started"}`;
//! a GET there answers 404 "…not registered for GET requests…", any other path 404 "…is not
//! registered." (as n8n does). Every POST to the webhook is recorded (headers with lowercase
//! names, the exact body bytes and the body parsed as JSON) together with the status it got.
//!
//! Knobs: [`FakeN8n::set_down`] (503 until switched back up), [`FakeN8n::fail_next`] (500 for
//! the next N requests; [`FakeN8n::fail_next_with`] for another status), [`FakeN8n::set_delay`] (answer late, to exercise client timeouts) and
//! [`FakeN8n::set_auto_reply`] (after answering, POST `{"contact_id","dispatch_id","text"}` to
//! the request's `callback_url`, like a workflow's HTTP Request node would;
//! [`FakeN8n::set_auto_reply_tagged`] appends the `dispatch_id` to the text, and each
//! [`Callback`] keeps the callee's JSON answer).
//!
//! Synchronise with [`FakeN8n::wait_for`], which polls until enough requests arrived or a
//! deadline passes: never with fixed sleeps.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The webhook path, as n8n serves a production webhook whose node path is `conversa`.
pub const WEBHOOK_PATH: &str = "/webhook/conversa";

/// One request the webhook received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Header names in lowercase.
    pub headers: HashMap<String, String>,
    /// The body parsed as JSON (`Value::String` of the text when it is not JSON).
    pub body: Value,
    /// The exact body bytes (what a signature covers).
    pub raw: Vec<u8>,
    /// The status the fake answered with.
    pub status: u16,
}

impl Received {
    /// A header by name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn dispatch_id(&self) -> Option<&str> {
        self.body.get("dispatch_id").and_then(Value::as_str)
    }
}

/// One auto-reply callback the fake made.
#[derive(Clone, Debug)]
pub struct Callback {
    pub url: String,
    pub body: Value,
    /// The callee's status, or `None` when the call failed.
    pub status: Option<u16>,
    /// The callee's answer parsed as JSON (`None` when the call failed or it was not JSON).
    pub answer: Option<Value>,
}

#[derive(Default)]
struct Knobs {
    down: bool,
    fail_next: usize,
    fail_status: u16,
    delay: Duration,
    auto_reply: Option<String>,
    /// Append ` [<dispatch_id>]` to each auto-reply text.
    tag_replies: bool,
}

#[derive(Default)]
struct Inner {
    knobs: Mutex<Knobs>,
    received: Mutex<Vec<Received>>,
    callbacks: Mutex<Vec<Callback>>,
    /// Webhook requests being answered now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
    /// `GET /healthz` requests (n8n's own liveness probe).
    health_checks: std::sync::atomic::AtomicUsize,
}

pub struct FakeN8n {
    addr: SocketAddr,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeN8n {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeN8n {
    /// Serves on an ephemeral loopback port until dropped.
    pub async fn start() -> FakeN8n {
        let inner = Arc::new(Inner::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake n8n");
        let addr = listener.local_addr().expect("fake n8n address");
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake n8n serves");
        });
        FakeN8n {
            addr,
            inner,
            server,
        }
    }

    /// The most webhook requests that were ever being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.inner
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many times `GET /healthz` was asked.
    pub fn health_checks(&self) -> usize {
        self.inner
            .health_checks
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The production webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}{WEBHOOK_PATH}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every webhook request so far, in arrival order (failed ones included).
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// The requests received from index `from` on (arrival order), for callers that process
    /// a long run of requests incrementally instead of copying all of them on every poll.
    pub fn received_from(&self, from: usize) -> Vec<Received> {
        let received = self.inner.received.lock().unwrap();
        received
            .get(from..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }

    /// The requests answered with 2xx.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// The `dispatch_id` of every request so far, in arrival order (retries appear again).
    pub fn dispatch_ids(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|r| r.dispatch_id().map(str::to_owned))
            .collect()
    }

    /// The auto-reply callbacks made so far.
    pub fn callbacks(&self) -> Vec<Callback> {
        self.inner.callbacks.lock().unwrap().clone()
    }

    /// While down, every request gets 503 (n8n restarting behind a proxy).
    pub fn set_down(&self, down: bool) {
        self.inner.knobs.lock().unwrap().down = down;
    }

    /// The next `n` requests get 500.
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500);
    }

    /// The next `n` requests get `status` (an n8n-style JSON error body).
    pub fn fail_next_with(&self, n: usize, status: u16) {
        let mut knobs = self.inner.knobs.lock().unwrap();
        knobs.fail_next = n;
        knobs.fail_status = status;
    }

    /// Answer every request only after `delay` (recorded on arrival).
    pub fn set_delay(&self, delay: Duration) {
        self.inner.knobs.lock().unwrap().delay = delay;
    }

    /// When `Some(text)`, each accepted request with a non-null `callback_url` is answered by a
    /// callback POST of `{"contact_id", "dispatch_id", "text"}`; failures are recorded, not
    /// retried (n8n's HTTP Request node does not retry by default).
    pub fn set_auto_reply(&self, text: Option<String>) {
        let mut knobs = self.inner.knobs.lock().unwrap();
        knobs.tag_replies = false;
        knobs.auto_reply = text;
    }

    /// Like [`FakeN8n::set_auto_reply`], but each reply's text is `"<text> [<dispatch_id>]"`, so
    /// a test can follow every reply to where it was delivered.
    pub fn set_auto_reply_tagged(&self, text: Option<String>) {
        let mut knobs = self.inner.knobs.lock().unwrap();
        knobs.tag_replies = text.is_some();
        knobs.auto_reply = text;
    }

    /// Polls until at least `count` requests arrived and returns them all; panics, listing what
    /// did arrive, when `deadline` passes first.
    pub async fn wait_for(&self, count: usize, deadline: Duration) -> Vec<Received> {
        self.wait_until(deadline, &format!("{count} request(s)"), |r| {
            r.len() >= count
        })
        .await
    }

    /// Polls until at least `count` requests were accepted (2xx) and returns those.
    pub async fn wait_for_accepted(&self, count: usize, deadline: Duration) -> Vec<Received> {
        self.wait_until(deadline, &format!("{count} accepted request(s)"), |r| {
            r.iter().filter(|r| r.accepted()).count() >= count
        })
        .await
        .into_iter()
        .filter(Received::accepted)
        .collect()
    }

    /// Polls until `done` holds for the requests received so far and returns them.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            if tokio::time::Instant::now() >= until {
                let seen: Vec<_> = received
                    .iter()
                    .map(|r| (r.status, r.dispatch_id().map(str::to_owned)))
                    .collect();
                panic!("fake n8n: timed out after {deadline:?} waiting for {what}; got {seen:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn n8n_json(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if path == "/healthz" && method == Method::GET {
        inner
            .health_checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        return n8n_json(StatusCode::OK, json!({"status": "ok"}));
    }
    if path != WEBHOOK_PATH {
        let name = path.trim_start_matches("/webhook/");
        return n8n_json(
            StatusCode::NOT_FOUND,
            json!({
                "code": 404,
                "message": format!("The requested webhook \"{method} {name}\" is not registered."),
                "hint": "The workflow must be active for a production URL to run successfully.",
            }),
        );
    }
    if method != Method::POST {
        return n8n_json(
            StatusCode::NOT_FOUND,
            json!({
                "code": 404,
                "message": format!(
                    "This webhook is not registered for {method} requests. \
                     Did you mean to make a POST request?"
                ),
            }),
        );
    }

    let (status, delay, auto_reply, tag_replies) = {
        let mut knobs = inner.knobs.lock().unwrap();
        let status = if knobs.down {
            StatusCode::SERVICE_UNAVAILABLE
        } else if knobs.fail_next > 0 {
            knobs.fail_next -= 1;
            StatusCode::from_u16(knobs.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            StatusCode::OK
        };
        (
            status,
            knobs.delay,
            knobs.auto_reply.clone(),
            knobs.tag_replies,
        )
    };

    let parsed = serde_json::from_slice::<Value>(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
    let recorded_headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    inner.received.lock().unwrap().push(Received {
        headers: recorded_headers,
        body: parsed.clone(),
        raw: body.to_vec(),
        status: status.as_u16(),
    });

    {
        use std::sync::atomic::Ordering::SeqCst;
        let now = inner.in_flight.fetch_add(1, SeqCst) + 1;
        inner.max_in_flight.fetch_max(now, SeqCst);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        inner.in_flight.fetch_sub(1, SeqCst);
    }

    if status == StatusCode::SERVICE_UNAVAILABLE {
        return n8n_json(
            status,
            json!({"code": 503, "message": "Service Unavailable"}),
        );
    }
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        return n8n_json(status, json!({"code": 0, "message": "Error in workflow"}));
    }
    if !status.is_success() {
        let reason = status.canonical_reason().unwrap_or("Error");
        return n8n_json(status, json!({"code": status.as_u16(), "message": reason}));
    }

    if let (Some(text), Some(url)) = (
        auto_reply,
        parsed.get("callback_url").and_then(Value::as_str),
    ) {
        let dispatch_id = parsed.get("dispatch_id").cloned().unwrap_or(Value::Null);
        let text = match (tag_replies, dispatch_id.as_str()) {
            (true, Some(id)) => format!("{text} [{id}]"),
            _ => text,
        };
        let callback = json!({
            "contact_id": parsed.get("contact_id").cloned().unwrap_or(Value::Null),
            "dispatch_id": dispatch_id,
            "text": text,
        });
        tokio::spawn(call_back(inner.clone(), url.to_owned(), callback));
    }
    n8n_json(StatusCode::OK, json!({"message": "Workflow was started"}))
}

/// What the workflow's HTTP Request node does: one JSON POST, 10 s timeout, no retry.
async fn call_back(inner: Arc<Inner>, url: String, body: Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent("axios/1.12.0")
        .build()
        .expect("callback client");
    let (status, answer) = match client.post(&url).json(&body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (Some(status), r.json::<Value>().await.ok())
        }
        Err(_) => (None, None),
    };
    inner.callbacks.lock().unwrap().push(Callback {
        url,
        body,
        status,
        answer,
    });
}
