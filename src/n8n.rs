//! The n8n client: executes [`Effect::Dispatch`] outbox entries by POSTing them to an n8n
//! webhook.
//!
//! # What
//!
//! The engine decides *that* n8n must be called (customer messages to answer, a proactive
//! conversation to open, a meeting to arrange, the bot being back in charge); this module decides
//! *how*: one JSON document per dispatch, POSTed to the configured Webhook node URL. The workflow
//! answers at once (a Webhook node set to "respond immediately" says
//! `200 {"message":"Workflow was started"}`) and later POSTs its reply to `callback_url`
//! (`<public_url>/send-response`), naming the `dispatch_id` it answers.
//!
//! The body (`null` wherever a value is unknown):
//!
//! ```json
//! {
//!   "event": "message" | "proactive" | "scheduling" | "released" | "missed",
//!   "dispatch_id": "…", "epoch": 3, "attempt": 1,
//!   "account_id": 33981183, "contact_id": 1298200,
//!   "lead_id": 123, "talk_id": 45, "chat_id": "…",
//!   "seller": {"id": "…", "name": "…"} | null,
//!   "area_atuacao": …, "trigger_type": …, "lead_data": …,
//!   "messages": [{"id": "…", "text": "…", "created_at": 1700000000,
//!                 "attachment": {"type": "voice", "link": "…", "file_name": …} | null}],
//!   "history": [ …the latest timeline entries, oldest first… ],
//!   "scheduling": { …details… },   // only for "scheduling"
//!   "released": { …details… },     // only for "released"
//!   "missed": [{"message_id": "…", "at": 1700000000000}],  // only for "missed": messages
//!                                  // Kommo has and conversa never received (ask to repeat)
//!   "callback_url": "https://conversa.example/send-response?contact_id=…&dispatch_id=…&reply_token=…" | null
//! }
//! ```
//!
//! `area_atuacao`, `trigger_type` and `lead_data` are read from the dispatch's free-form
//! `details` (keys of the same names); `seller` is the one the dispatch was made for (the
//! releasing seller for `released`), not whoever holds the conversation when it is executed.
//!
//! # Why this shape
//!
//! * **At least once, deduplicated by the receiver.** The outbox may run an entry again after a
//!   crash or a lost answer, so every request carries `Idempotency-Key: <dispatch_id>` (and the
//!   id in the body); `attempt` tells the workflow it is a retry.
//! * **Authenticated.** With a shared secret, `X-Conversa-Signature: sha256=<hex>` is the
//!   HMAC-SHA256 of the exact body bytes (the body is serialised once, signed, and sent as is),
//!   so the workflow can reject forged dispatches; see [`sign`].
//! * **Retry what can heal, dead-letter what cannot.** 2xx is done; 408, 429, 5xx, connection
//!   failures and timeouts are [`ExecError::Retry`] (n8n restarting, overloaded, or a proxy in
//!   front of it). So is 404: n8n answers "webhook … is not registered" while it starts (before
//!   it has activated its workflows) and while the workflow is switched off to be edited, and
//!   a dispatch dead-lettered then would be a customer never answered; a wrong URL shows as
//!   failing attempts in the logs and metrics until the dead-letter deadline. Every other
//!   answer (400, 401, 403, …; or a redirect, which would turn the POST into a GET) is
//!   [`ExecError::Permanent`]: retrying the same bytes cannot help.
//! * **Bounded.** One shared [`reqwest::Client`] (connection pool) with a whole-request timeout,
//!   so a hung n8n costs one attempt's time, never a stuck actor.
//! * **Testable.** [`payload`] and [`sign`] are pure functions; the HTTP part is exercised
//!   against a faithful fake webhook in `tests/n8n_client.rs`.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use conversa_actors::message::{Attachment, InboundMessage};
use conversa_actors::{Dispatch, DispatchKind, Effect, ExecError, Executor, Job};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::reply_token::ReplyTokens;

/// The header carrying the body's HMAC-SHA256 (`sha256=<lowercase hex>`).
pub const SIGNATURE_HEADER: &str = "X-Conversa-Signature";
/// The header carrying the `dispatch_id`, stable across retries.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// The path, under the public URL, where n8n posts its replies.
pub const CALLBACK_PATH: &str = "/send-response";

/// How much of an error answer's body goes into the error message.
const BODY_EXCERPT: usize = 200;

/// Where and how to call n8n.
#[derive(Clone)]
pub struct N8nSettings {
    /// The production URL of the workflow's Webhook node.
    pub webhook_url: String,
    /// Signs every body when set (an empty string counts as unset).
    pub shared_secret: Option<String>,
    /// This service's public base URL, from which `callback_url` is made.
    pub public_url: Option<String>,
    /// Signs each dispatch's `callback_url` with its reply token.
    pub reply_tokens: ReplyTokens,
    /// The longest one attempt may take, connection included.
    pub timeout: Duration,
    /// Dispatches sent at once (`N8N_MAX_CONCURRENCY`); the others wait for a turn, in the
    /// outbox or in line, instead of opening one connection each.
    pub max_concurrency: usize,
    /// The largest dispatch body (`MAX_DISPATCH_BYTES`); see [`fit`].
    pub max_body_bytes: usize,
}

/// The secret stays out of logs.
impl fmt::Debug for N8nSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("N8nSettings")
            .field("webhook_url", &crate::redact::url(&self.webhook_url))
            .field(
                "shared_secret",
                &self.shared_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_url", &self.public_url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Executes dispatches by POSTing them to n8n. Cheap to share behind an `Arc`.
pub struct N8nClient {
    http: reqwest::Client,
    webhook_url: reqwest::Url,
    secret: Option<String>,
    public_url: Option<String>,
    reply_tokens: ReplyTokens,
    /// Turns to call n8n: a burst of dispatches queues here, never a stampede of connections.
    turns: tokio::sync::Semaphore,
    max_body_bytes: usize,
    /// The whole budget of one attempt, the wait for a turn included (see [`N8nClient::post`]).
    budget: Duration,
}

impl fmt::Debug for N8nClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("N8nClient")
            .field(
                "webhook_url",
                &crate::redact::url(self.webhook_url.as_str()),
            )
            .field("signed", &self.secret.is_some())
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl N8nClient {
    /// Checks the settings and builds the shared HTTP client.
    pub fn new(settings: N8nSettings) -> anyhow::Result<Self> {
        let webhook_url = reqwest::Url::parse(&settings.webhook_url).with_context(|| {
            format!(
                "n8n webhook URL {:?}",
                crate::redact::url(&settings.webhook_url)
            )
        })?;
        if !matches!(webhook_url.scheme(), "http" | "https") {
            bail!(
                "n8n webhook URL {:?}: want http or https",
                crate::redact::url(&settings.webhook_url)
            );
        }
        if settings.timeout.is_zero() {
            bail!("n8n timeout must be greater than zero");
        }
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirected POST becomes a GET without its body: never follow one, report it.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("conversa/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the n8n HTTP client")?;
        Ok(Self {
            http,
            webhook_url,
            secret: settings.shared_secret.filter(|s| !s.is_empty()),
            public_url: settings.public_url.filter(|s| !s.trim().is_empty()),
            reply_tokens: settings.reply_tokens,
            turns: tokio::sync::Semaphore::new(settings.max_concurrency.max(1)),
            max_body_bytes: settings.max_body_bytes.max(MIN_BODY_BYTES),
            budget: settings
                .timeout
                .saturating_sub(BUDGET_MARGIN)
                .max(settings.timeout / 2),
        })
    }

    /// One POST; the body is serialised once so the signature covers exactly what is sent.
    async fn post(&self, job: &Job, dispatch: &Dispatch) -> Result<(), ExecError> {
        let token = self.reply_tokens.token(job.key, &dispatch.dispatch_id);
        let callback = self
            .public_url
            .as_deref()
            .and_then(|base| callback_url(base, job.key.contact_id, &dispatch.dispatch_id, &token));
        let body = fit(
            payload(job, dispatch, callback.as_deref()),
            self.max_body_bytes,
        )
        .map_err(|e| ExecError::Permanent(format!("serialising the dispatch: {e}")))?;
        // One budget for the wait for a turn and the request, a little under the engine's
        // effect timeout: the attempt always ends here, never abandoned by the engine while
        // the request is out (n8n would then run a dispatch whose retry comes too, and more
        // requests than the turns allow would be in flight). Waiting sends nothing, so an
        // attempt that found no turn is safe to retry.
        let started = Instant::now();
        let _turn = tokio::time::timeout(self.budget, self.turns.acquire())
            .await
            .map_err(|_| {
                ExecError::Retry("n8n busy: no turn to send within the effect timeout".into())
            })?
            .map_err(|_| ExecError::Retry("n8n client closing".into()))?;
        // A request is only sent with at least half the budget left, so a slow n8n is not
        // cut off mid-way (and sent the same dispatch again) because the turn came late.
        let left = self.budget.saturating_sub(started.elapsed());
        if left < self.budget / 2 {
            return Err(ExecError::Retry(
                "n8n busy: too little of the effect timeout left after waiting for a turn".into(),
            ));
        }
        let mut request = self
            .http
            .post(self.webhook_url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(IDEMPOTENCY_HEADER, dispatch.dispatch_id.as_str());
        if let Some(secret) = &self.secret {
            request = request.header(SIGNATURE_HEADER, sign(secret, &body));
        }
        let started = Instant::now();
        let response = match request.timeout(left).body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let latency_ms = started.elapsed().as_millis() as u64;
                let builder = e.is_builder();
                let error = describe(e);
                tracing::info!(
                    contact = %job.key,
                    dispatch_id = %dispatch.dispatch_id,
                    status = "error",
                    latency_ms,
                    attempt = job.attempt,
                    error = %error,
                    "n8n dispatch"
                );
                return Err(if builder {
                    ExecError::Permanent(format!("n8n request: {error}"))
                } else {
                    ExecError::Retry(format!("n8n unreachable: {error}"))
                });
            }
        };
        let status = response.status();
        let latency_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            contact = %job.key,
            dispatch_id = %dispatch.dispatch_id,
            status = status.as_u16(),
            latency_ms,
            attempt = job.attempt,
            "n8n dispatch"
        );
        if status.is_success() {
            return Ok(());
        }
        // The body only feeds the error message: a failure to read it changes nothing.
        // An n8n that echoes the request would echo the reply token: it never reaches the
        // error, which is logged, kept in the dead letters and written on the lead.
        let text = response
            .text()
            .await
            .unwrap_or_default()
            .replace(token.as_str(), "***");
        let message = format!("n8n answered {status}: {}", excerpt(&text));
        Err(classify(status, message))
    }
}

#[async_trait]
impl Executor for N8nClient {
    async fn execute(&self, job: &Job) -> Result<(), ExecError> {
        match &job.effect {
            Effect::Dispatch(dispatch) => self.post(job, dispatch).await,
            _ => Err(ExecError::Permanent("not a dispatch".into())),
        }
    }
}

/// Retry for answers that may heal (timeout, rate limit, server trouble, a webhook not
/// registered yet), else permanent.
fn classify(status: reqwest::StatusCode, message: String) -> ExecError {
    let code = status.as_u16();
    if code == 404 || code == 408 || code == 429 || status.is_server_error() {
        ExecError::Retry(message)
    } else {
        ExecError::Permanent(message)
    }
}

/// A transport error with its causes (reqwest's own message hides the interesting part), never
/// the URL (it may carry credentials).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out: "
    } else if e.is_connect() {
        "cannot connect: "
    } else {
        ""
    };
    format!("{kind}{}", crate::redact::client_error(e))
}

/// At most [`BODY_EXCERPT`] characters of `text`, on a character boundary.
fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The event name n8n switches on.
fn event_name(kind: DispatchKind) -> &'static str {
    match kind {
        DispatchKind::Message => "message",
        DispatchKind::Proactive => "proactive",
        DispatchKind::Scheduling => "scheduling",
        DispatchKind::Released => "released",
        DispatchKind::Missed => "missed",
    }
}

fn attachment_json(a: &Attachment) -> Value {
    json!({ "type": a.kind, "link": a.link, "file_name": a.file_name })
}

fn message_json(m: &InboundMessage) -> Value {
    json!({
        "id": m.id,
        "text": m.text,
        "created_at": m.created_at,
        "attachment": m.attachment.as_ref().map(attachment_json),
    })
}

/// How much sooner than the engine's effect timeout an attempt gives up on its own.
const BUDGET_MARGIN: Duration = Duration::from_millis(500);

/// The smallest dispatch size limit accepted: room for the envelope and one message.
const MIN_BODY_BYTES: usize = 16 * 1024;

/// `body` serialised within `max` bytes. Every part of a dispatch is bounded upstream (pending
/// messages, details, history), so this only bites on an unforeseen mix: the history goes
/// first, then the oldest messages, and `messages_omitted` says how many were left out.
pub fn fit(mut body: Value, max: usize) -> serde_json::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(&body)?;
    if bytes.len() <= max {
        return Ok(bytes);
    }
    body["history"] = json!([]);
    let mut omitted = 0usize;
    loop {
        bytes = serde_json::to_vec(&body)?;
        let Some(messages) = body["messages"].as_array_mut() else {
            return Ok(bytes);
        };
        if bytes.len() <= max || messages.len() <= 1 {
            return Ok(bytes);
        }
        messages.remove(0);
        omitted += 1;
        body["messages_omitted"] = json!(omitted);
    }
}

/// Where n8n posts the reply, with its proof:
/// `<public_url>/send-response?contact_id=..&dispatch_id=..&reply_token=..`; `None` when
/// `public_url` is blank.
pub fn callback_url(
    public_url: &str,
    contact_id: u64,
    dispatch_id: &str,
    reply_token: &str,
) -> Option<String> {
    let base = public_url.trim().trim_end_matches('/');
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("contact_id", &contact_id.to_string())
        .append_pair("dispatch_id", dispatch_id)
        .append_pair("reply_token", reply_token)
        .finish();
    (!base.is_empty()).then(|| format!("{base}{CALLBACK_PATH}?{query}"))
}

/// The JSON document n8n receives for `dispatch` (see the module docs), calling back
/// `callback_url`. Pure.
pub fn payload(job: &Job, dispatch: &Dispatch, callback_url: Option<&str>) -> Value {
    let detail = |key: &str| dispatch.details.get(key).cloned().unwrap_or(Value::Null);
    let history = serde_json::to_value(&job.history).unwrap_or_else(|_| Value::Array(Vec::new()));
    let mut body = json!({
        "event": event_name(dispatch.kind),
        "dispatch_id": dispatch.dispatch_id,
        "epoch": dispatch.epoch,
        "attempt": job.attempt,
        "account_id": job.key.account_id,
        "contact_id": job.key.contact_id,
        "lead_id": job.links.lead_id,
        "talk_id": job.links.talk_id,
        "chat_id": job.links.chat_id,
        "seller": dispatch.seller.as_ref().map(|s| json!({ "id": s.id, "name": s.name })),
        "area_atuacao": detail("area_atuacao"),
        "messages": dispatch.messages.iter().map(message_json).collect::<Vec<_>>(),
        "history": history,
        "trigger_type": detail("trigger_type"),
        "lead_data": detail("lead_data"),
        "callback_url": callback_url,
    });
    match dispatch.kind {
        DispatchKind::Scheduling => body["scheduling"] = dispatch.details.clone(),
        DispatchKind::Released => body["released"] = dispatch.details.clone(),
        DispatchKind::Missed => body["missed"] = detail("missed"),
        DispatchKind::Message | DispatchKind::Proactive => {}
    }
    body
}

/// `sha256=<lowercase hex HMAC-SHA256(secret, body)>`, the value of [`SIGNATURE_HEADER`].
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any size");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// n8n's reachability (its `/healthz` on the `N8N_WEBHOOK_URL` host).
/// The last n8n probe and whether one is running (`/ready`, `/test-integration`).
#[derive(Default)]
pub struct ProbeCache {
    pub last: std::sync::Mutex<Option<(std::time::Instant, N8nCheck)>>,
    pub running: std::sync::atomic::AtomicBool,
    /// Held by the very first probe, which callers wait for.
    pub first: tokio::sync::Mutex<()>,
}

#[derive(Clone, Default, serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({"configured": true, "ok": true, "status": 200, "latency_ms": 3.1}))]
pub struct N8nCheck {
    pub configured: bool,
    pub ok: bool,
    /// The HTTP status n8n answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use conversa_actors::ContactKey;
    use conversa_actors::message::{Links, SellerRef};
    use conversa_actors::timeline::{Entry, What};

    fn job(dispatch: &Dispatch) -> Job {
        Job {
            key: ContactKey::new(33981183, 1298200),
            id: dispatch.dispatch_id.clone(),
            effect: Effect::Dispatch(dispatch.clone()),
            attempt: 2,
            links: Links {
                lead_id: Some(77),
                talk_id: None,
                chat_id: Some("chat-1".into()),
            },
            phase: "bot_active",
            seller: None,
            history: vec![Entry {
                at: 1_700_000_000_000,
                what: What::MessageIn,
                message_id: Some("m1".into()),
                dispatch_id: None,
                detail: None,
            }],
            committed: Default::default(),
            found: Default::default(),
        }
    }

    fn dispatch(kind: DispatchKind, details: Value) -> Dispatch {
        Dispatch {
            dispatch_id: "d-1".into(),
            kind,
            epoch: 4,
            messages: Vec::new(),
            seller: None,
            details,
        }
    }

    #[test]
    fn message_payload_carries_messages_links_and_nulls() {
        let mut d = dispatch(DispatchKind::Message, Value::Null);
        d.messages = vec![
            InboundMessage {
                id: "m1".into(),
                text: "oi".into(),
                created_at: 1_700_000_000,
                attachment: None,
                links: Links::default(),
            },
            InboundMessage {
                id: "m2".into(),
                text: String::new(),
                created_at: 1_700_000_001,
                attachment: Some(Attachment {
                    kind: "voice".into(),
                    link: "https://files/x.ogg".into(),
                    file_name: Some("x.ogg".into()),
                }),
                links: Links::default(),
            },
        ];
        let url = callback_url("https://conversa.example/", 1298200, "d-1", "t0k");
        let p = payload(&job(&d), &d, url.as_deref());
        assert_eq!(p["event"], "message");
        assert_eq!(p["dispatch_id"], "d-1");
        assert_eq!(p["epoch"], 4);
        assert_eq!(p["attempt"], 2);
        assert_eq!(p["account_id"], 33981183);
        assert_eq!(p["contact_id"], 1298200);
        assert_eq!(p["lead_id"], 77);
        assert_eq!(p["talk_id"], Value::Null);
        assert_eq!(p["chat_id"], "chat-1");
        assert_eq!(p["seller"], Value::Null);
        assert_eq!(p["area_atuacao"], Value::Null);
        assert_eq!(p["trigger_type"], Value::Null);
        assert_eq!(p["lead_data"], Value::Null);
        assert_eq!(
            p["callback_url"],
            "https://conversa.example/send-response?contact_id=1298200&dispatch_id=d-1&reply_token=t0k"
        );
        assert_eq!(
            p["messages"],
            json!([
                {"id": "m1", "text": "oi", "created_at": 1_700_000_000, "attachment": null},
                {"id": "m2", "text": "", "created_at": 1_700_000_001,
                 "attachment": {"type": "voice", "link": "https://files/x.ogg", "file_name": "x.ogg"}},
            ])
        );
        assert_eq!(p["history"][0]["what"], "message_in");
        assert_eq!(p["history"][0]["message_id"], "m1");
        assert!(p.get("scheduling").is_none());
        assert!(p.get("released").is_none());
    }

    #[test]
    fn proactive_payload_takes_context_from_details() {
        let mut d = dispatch(
            DispatchKind::Proactive,
            json!({"area_atuacao": "saude", "trigger_type": "form", "lead_data": {"name": "Ana"}}),
        );
        d.seller = Some(SellerRef {
            id: "s1".into(),
            name: "Bia".into(),
        });
        let p = payload(&job(&d), &d, None);
        assert_eq!(p["event"], "proactive");
        assert_eq!(p["seller"], json!({"id": "s1", "name": "Bia"}));
        assert_eq!(p["area_atuacao"], "saude");
        assert_eq!(p["trigger_type"], "form");
        assert_eq!(p["lead_data"], json!({"name": "Ana"}));
        assert_eq!(p["messages"], json!([]));
        assert_eq!(p["callback_url"], Value::Null);
    }

    #[test]
    fn scheduling_and_released_repeat_their_details() {
        let details = json!({"when": "amanhã 10h", "area_atuacao": "odonto"});
        let d = dispatch(DispatchKind::Scheduling, details.clone());
        let p = payload(
            &job(&d),
            &d,
            callback_url("http://h:1", 7, "d", "t").as_deref(),
        );
        assert_eq!(p["event"], "scheduling");
        assert_eq!(p["scheduling"], details);
        assert_eq!(p["area_atuacao"], "odonto");
        assert_eq!(
            p["callback_url"],
            "http://h:1/send-response?contact_id=7&dispatch_id=d&reply_token=t"
        );
        assert!(p.get("released").is_none());

        let details = json!({"reason": "release", "by": "s1"});
        let d = dispatch(DispatchKind::Released, details.clone());
        let p = payload(
            &job(&d),
            &d,
            callback_url("http://h:1///", 7, "d", "t").as_deref(),
        );
        assert_eq!(p["event"], "released");
        assert_eq!(p["released"], details);
        assert_eq!(
            p["callback_url"],
            "http://h:1/send-response?contact_id=7&dispatch_id=d&reply_token=t"
        );
        assert!(p.get("scheduling").is_none());

        let missed = json!([{"message_id": "1508b51c", "at": 1767225600000u64}]);
        let d = dispatch(DispatchKind::Missed, json!({ "missed": missed }));
        let p = payload(&job(&d), &d, None);
        assert_eq!(p["event"], "missed");
        assert_eq!(p["missed"], missed);
    }

    #[test]
    fn sign_matches_rfc_4231_case_2() {
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_ne!(sign("Jefe", b"x"), sign("Jeff", b"x"));
    }

    #[test]
    fn statuses_are_classified() {
        use reqwest::StatusCode as S;
        for s in [
            S::NOT_FOUND,
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
            S::INTERNAL_SERVER_ERROR,
            S::BAD_GATEWAY,
        ] {
            assert!(
                matches!(classify(s, String::new()), ExecError::Retry(_)),
                "{s}"
            );
        }
        for s in [S::BAD_REQUEST, S::UNAUTHORIZED, S::MOVED_PERMANENTLY] {
            assert!(
                matches!(classify(s, String::new()), ExecError::Permanent(_)),
                "{s}"
            );
        }
    }

    #[test]
    fn an_oversized_dispatch_loses_history_then_its_oldest_messages() {
        let mut d = dispatch(DispatchKind::Message, Value::Null);
        d.messages = (0..20)
            .map(|i| InboundMessage {
                id: format!("m{i}"),
                text: "x".repeat(4000),
                created_at: 0,
                attachment: None,
                links: Links::default(),
            })
            .collect();
        let body = payload(&job(&d), &d, None);
        let whole = serde_json::to_vec(&body).unwrap();
        assert_eq!(fit(body.clone(), whole.len()).unwrap(), whole);
        let fitted = fit(body, 30_000).unwrap();
        assert!(fitted.len() <= 30_000, "{}", fitted.len());
        let v: Value = serde_json::from_slice(&fitted).unwrap();
        let kept = v["messages"].as_array().unwrap();
        assert_eq!(kept.last().unwrap()["id"], "m19", "the newest stay");
        assert_eq!(v["messages_omitted"], 20 - kept.len());
        assert_eq!(v["history"], json!([]));
    }

    #[test]
    fn excerpt_cuts_on_characters() {
        let long = "é".repeat(300);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), BODY_EXCERPT + 1);
        assert_eq!(excerpt(" short "), "short");
    }

    #[test]
    fn settings_are_checked_and_the_secret_is_not_printed() {
        let settings = N8nSettings {
            webhook_url: "http://127.0.0.1:5678/webhook/conversa".into(),
            shared_secret: Some("s3cret".into()),
            public_url: None,
            reply_tokens: ReplyTokens::with_key(&[1; 32]),
            timeout: Duration::from_secs(5),
            max_concurrency: 4,
            max_body_bytes: 128 * 1024,
        };
        assert!(!format!("{settings:?}").contains("s3cret"));
        assert!(N8nClient::new(settings.clone()).is_ok());
        let bad = N8nSettings {
            webhook_url: "ftp://x/y".into(),
            ..settings.clone()
        };
        assert!(N8nClient::new(bad).is_err());
        let bad = N8nSettings {
            webhook_url: "not a url".into(),
            ..settings
        };
        assert!(N8nClient::new(bad).is_err());
    }
}
