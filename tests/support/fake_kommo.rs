//! A faithful fake of one Kommo account, for tests that must not need the real SaaS.
//!
//! It behaves as `docs/kommo.md` describes (OAuth, REST v4, the Salesbot,
//! limits), because the point of a fake is to fail our code the way Kommo would:
//!
//! * **OAuth** (`POST /oauth2/access_token`, JSON): authorization codes live 20 min and are
//!   single use; access tokens live 86 400 s; refresh tokens are **single use and rotate**: a
//!   reused (or revoked) refresh token gets `401` with the real OAuthProblemJson body and hint
//!   `Token has been revoked`; a bad code gets `400` (`Cannot decrypt the authorization code`).
//! * **REST v4**: `application/hal+json` on success, `application/problem+json` errors,
//!   **204 with an empty body** for a missing lead/contact and for empty lists, `page`/`limit≤250`
//!   pagination with `_links.next` (users), `401` problem for an unknown or stale bearer token.
//! * **Limits**: every request to `/api/…` is timestamped; when more than 7 arrive within any
//!   1-second sliding window the request gets an **HTML 429 with no `Retry-After`**.
//!   [`FakeKommo::max_requests_in_any_second`] reports the fake's own measurement. Block mode
//!   ([`FakeKommo::set_blocked`]) answers every request, tokens included, with nginx's HTML 403.
//!   Token requests are not counted in the 7 req/s window (the docs do not say they are).
//! * **Salesbot**: `POST /api/v2/salesbot/run` (array ≤ 100) → `202 {"success":true,…}`; runs are
//!   recorded. [`FakeKommo::set_server_error_on_salesbot`] makes the next runs answer 500 *after*
//!   the bot ran (recorded with status 500): the hazard that forbids blind retries.
//! * **Account setup** (amoCRM `webhooks-api` and `custom-fields` pages, docs/kommo.md):
//!   `GET /api/v4/webhooks` (`filter[destination]`; 204 when none, the list convention),
//!   `POST /api/v4/webhooks` (`{destination, settings}` → 201 with the hook; an existing
//!   destination is updated, its `disabled` flag kept — the docs do not say a POST enables it),
//!   `DELETE /api/v4/webhooks` (`{destination}` → 204, 404 when none); `GET/POST
//!   /api/v4/leads/custom_fields` (`page`/`limit≤250`, 201 `_embedded.custom_fields`; a POST
//!   without `name` or with an unknown `type` is a 400 with `validation-errors`). At most 100
//!   hooks per account. [`FakeKommo::deliver`] sends a body to every enabled hook and disables
//!   one after more than 100 invalid answers in 2 hours ([`FakeKommo::set_disable_after`]
//!   lowers the limit), as Kommo does; [`FakeKommo::set_webhook_disabled`] switches one off.
//! * **Events** (docs/kommo.md, *Events*): `GET /api/v4/events` lists `incoming_chat_message`
//!   events recorded by [`FakeKommo::customer_wrote`] — `entity_type: contact`, `entity_id` the
//!   contact, `value_after: [{"message": {"id": …}}]` (the message id, no text), `created_at` in
//!   Unix seconds — filtered by `filter[type][]`, `filter[entity][]` and
//!   `filter[created_at][from|to]` (inclusive), newest first, `page`/`limit≤100` with
//!   `_links.next`, 204 when none. The order and the 204 follow the other lists (unconfirmed
//!   for events).
//! * **Webhooks out**: [`FakeKommo::send_webhook`] POSTs a form body as Kommo does
//!   (`application/x-www-form-urlencoded`, `User-Agent: amoCRM-WebHook-client/1.0`) and
//!   [`message_add_form`] builds the percent-encoded bracket body of docs/kommo.md, *Capture B*.
//!
//! Unconfirmed details are marked where they are guessed. Synchronise with [`wait_until`]
//! (polls a condition until a deadline), never with fixed sleeps.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const ACCOUNT_ID: u64 = 33981183;
pub const SUBDOMAIN: &str = "fakeconta";
pub const ACCOUNT_NAME: &str = "Fake Conta";
pub const CLIENT_ID: &str = "8a3f0c1e-fake-4c1d-9d0e-client000001";
pub const CLIENT_SECRET: &str = "fake-client-secret";
pub const REDIRECT_URI: &str = "https://conversa.example/oauth/kommo/callback";
/// Requests per second above which the fake answers 429.
pub const RATE_LIMIT: usize = 7;
pub const ACCESS_TOKEN_TTL: u64 = 86_400;
pub const AUTH_CODE_TTL: u64 = 20 * 60;

const OAUTH_PROBLEM_TITLE: &str = "Некорректный запрос";
const OAUTH_PROBLEM_DETAIL: &str = "В запросе отсутствует ряд параметров или параметры невалидны";

const HTML_403: &str = "<html>\r\n<head><title>403 Forbidden</title></head>\r\n<body>\r\n<center><h1>403 Forbidden</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const HTML_429: &str = "<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---- seed data ----

/// A lead custom field of the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeField {
    pub id: u64,
    pub name: String,
    pub code: Option<String>,
    /// `text`, `textarea`, `numeric`, ...
    pub kind: String,
}

/// A webhook registered in the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeWebhook {
    pub id: u64,
    pub destination: String,
    pub settings: Vec<String>,
    pub disabled: bool,
}

/// The event codes `POST /api/v4/webhooks` accepts (amoCRM's list plus the Kommo-only
/// `add_message`, `add_unsorted`, `delete_unsorted`, unconfirmed spellings).
pub const WEBHOOK_EVENT_CODES: &[&str] = &[
    "responsible_lead",
    "responsible_contact",
    "responsible_company",
    "responsible_customer",
    "responsible_task",
    "restore_lead",
    "restore_contact",
    "restore_company",
    "add_lead",
    "add_contact",
    "add_company",
    "add_customer",
    "add_talk",
    "add_task",
    "update_lead",
    "update_contact",
    "update_company",
    "update_customer",
    "update_talk",
    "update_task",
    "delete_lead",
    "delete_contact",
    "delete_company",
    "delete_customer",
    "delete_task",
    "status_lead",
    "note_lead",
    "note_contact",
    "note_company",
    "note_customer",
    "add_chat_template_review",
    "add_message",
    "add_unsorted",
    "delete_unsorted",
];

/// Field types `POST /api/v4/leads/custom_fields` accepts (the docs' list, abridged).
const FIELD_TYPES: &[&str] = &[
    "text",
    "textarea",
    "numeric",
    "checkbox",
    "select",
    "multiselect",
    "date",
    "url",
    "radiobutton",
    "streetaddress",
    "birthday",
    "date_time",
    "price",
    "monetary",
    "category",
];

#[derive(Clone, Debug)]
pub struct FakeUser {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub is_active: bool,
    pub phone: Option<String>,
    pub amojo_id: Option<String>,
}

impl FakeUser {
    pub fn new(id: u64, name: &str) -> Self {
        FakeUser {
            id,
            name: name.to_owned(),
            email: format!("user{id}@example.com"),
            is_active: true,
            phone: Some(format!("+55119{id:08}")),
            amojo_id: Some(format!("0000{id:04}-amoj-4000-8000-{id:012}")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FakeLead {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    pub status_id: u64,
    pub pipeline_id: u64,
    pub contact_ids: Vec<u64>,
    /// field_id → the `values` array, as Kommo shows it.
    pub custom_fields: BTreeMap<u64, Value>,
    pub tags: Vec<String>,
}

impl FakeLead {
    pub fn new(id: u64) -> Self {
        FakeLead {
            id,
            name: format!("Lead #{id}"),
            responsible_user_id: 0,
            status_id: 47_000_001,
            pipeline_id: 7_000_001,
            contact_ids: Vec::new(),
            custom_fields: BTreeMap::new(),
            tags: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FakeContact {
    pub id: u64,
    pub name: String,
    pub responsible_user_id: u64,
    pub phones: Vec<String>,
    pub lead_ids: Vec<u64>,
}

impl FakeContact {
    pub fn new(id: u64, name: &str) -> Self {
        FakeContact {
            id,
            name: name.to_owned(),
            responsible_user_id: 0,
            phones: Vec::new(),
            lead_ids: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FakeTalk {
    pub id: u64,
    pub contact_id: u64,
    pub chat_id: String,
    pub lead_id: Option<u64>,
    pub is_in_work: bool,
    pub origin: String,
}

impl FakeTalk {
    pub fn new(id: u64, contact_id: u64, lead_id: Option<u64>) -> Self {
        FakeTalk {
            id,
            contact_id,
            chat_id: format!("7df3cc9c-26c0-4b30-b8c9-{id:012}"),
            lead_id,
            is_in_work: true,
            origin: "com.amocrm.amocrmwa".to_owned(),
        }
    }
}

// ---- what the fake records ----

#[derive(Clone, Debug)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub at: Instant,
    pub status: u16,
    /// The bearer token sent, if any.
    pub bearer: Option<String>,
    pub body: String,
}

impl FakeRequest {
    pub fn is_api(&self) -> bool {
        self.path.starts_with("/api/")
    }

    pub fn is_token(&self) -> bool {
        self.path == "/oauth2/access_token"
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FakeNote {
    pub id: u64,
    pub lead_id: u64,
    pub note_type: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SalesbotRun {
    pub bot_id: u64,
    pub entity_id: u64,
    pub entity_type: u64,
    /// What the fake answered (202, or 500 when a server error was injected after the run).
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LeadPatchRecord {
    pub lead_id: u64,
    pub body: Value,
}

/// One message of a `message[add]` webhook.
#[derive(Clone, Debug)]
pub struct FakeMessage {
    pub id: String,
    pub chat_id: String,
    pub talk_id: u64,
    pub contact_id: u64,
    pub lead_id: u64,
    pub text: String,
    pub created_at: u64,
    /// `incoming` (a customer) or `outgoing`.
    pub kind: String,
    pub author_id: String,
    /// `external` for a customer.
    pub author_type: String,
    pub author_name: String,
    pub attachment: Option<FakeAttachment>,
    pub origin: String,
}

#[derive(Clone, Debug)]
pub struct FakeAttachment {
    pub kind: String,
    pub link: String,
    pub file_name: String,
}

impl FakeMessage {
    /// A customer's WhatsApp Lite text, shaped like the real capture (B).
    pub fn incoming(id: &str, contact_id: u64, lead_id: u64, talk_id: u64, text: &str) -> Self {
        FakeMessage {
            id: id.to_owned(),
            chat_id: format!("7df3cc9c-26c0-4b30-b8c9-{contact_id:012}"),
            talk_id,
            contact_id,
            lead_id,
            text: text.to_owned(),
            created_at: now_unix(),
            kind: "incoming".to_owned(),
            author_id: "d408292e-3376-4108-82e3-45cb200f62c3".to_owned(),
            author_type: "external".to_owned(),
            author_name: "Douglas Augusto".to_owned(),
            attachment: None,
            origin: "com.amocrm.amocrmwa".to_owned(),
        }
    }

    pub fn with_voice(mut self, link: &str) -> Self {
        self.text = String::new();
        self.attachment = Some(FakeAttachment {
            kind: "voice".to_owned(),
            link: link.to_owned(),
            file_name: "data.m4a".to_owned(),
        });
        self
    }
}

/// Pairs percent-encoded the way Kommo posts its webhooks (`application/x-www-form-urlencoded`:
/// brackets as `%5B`/`%5D`, a space as `+`), in the given order.
pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        form.append_pair(k, v);
    }
    form.finish()
}

/// The smallest customer-message webhook: one `message[add]` item with only the keys a message
/// needs (id, contact, text, `incoming`), form-encoded.
pub fn customer_message(contact_id: u64, id: &str, text: &str) -> String {
    form(&[
        ("message[add][0][id]", id),
        ("message[add][0][contact_id]", &contact_id.to_string()),
        ("message[add][0][text]", text),
        ("message[add][0][type]", "incoming"),
    ])
}

/// The form body of a `message[add]` webhook, percent-encoded exactly as Kommo sends it
/// (`message%5Badd%5D%5B0%5D%5Bid%5D=…`), every value a string; several items are numbered.
pub fn message_add_form(account_id: u64, subdomain: &str, items: &[FakeMessage]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("account[subdomain]", subdomain);
    form.append_pair("account[id]", &account_id.to_string());
    form.append_pair(
        "account[_links][self]",
        &format!("https://{subdomain}.kommo.com"),
    );
    for (i, m) in items.iter().enumerate() {
        let key = |field: &str| format!("message[add][{i}][{field}]");
        let lead = m.lead_id.to_string();
        let mut pairs: Vec<(String, String)> = vec![
            (key("id"), m.id.clone()),
            (key("chat_id"), m.chat_id.clone()),
            (key("talk_id"), m.talk_id.to_string()),
            (key("contact_id"), m.contact_id.to_string()),
            (key("text"), m.text.clone()),
            (key("created_at"), m.created_at.to_string()),
            (key("element_type"), "2".to_owned()),
            (key("entity_type"), "lead".to_owned()),
            (key("element_id"), lead.clone()),
            (key("entity_id"), lead),
            (key("type"), m.kind.clone()),
            (key("author][id"), m.author_id.clone()),
            (key("author][type"), m.author_type.clone()),
            (key("author][name"), m.author_name.clone()),
        ];
        if let Some(a) = &m.attachment {
            pairs.push((key("attachment][type"), a.kind.clone()));
            pairs.push((key("attachment][link"), a.link.clone()));
            pairs.push((key("attachment][file_name"), a.file_name.clone()));
        }
        pairs.push((key("origin"), m.origin.clone()));
        for (k, v) in pairs {
            form.append_pair(&k, &v);
        }
    }
    form.finish()
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` when `deadline` passes.
pub async fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- state ----

enum RefreshState {
    Live,
    Used,
    Revoked,
}

struct AccessToken {
    expires_at: u64,
    stale: bool,
}

struct FailRule {
    prefix: String,
    status: u16,
    remaining: usize,
}

#[derive(Default)]
struct Account {
    users: BTreeMap<u64, FakeUser>,
    leads: BTreeMap<u64, FakeLead>,
    contacts: BTreeMap<u64, FakeContact>,
    talks: BTreeMap<u64, FakeTalk>,
    lead_fields: BTreeSet<u64>,
    field_defs: BTreeMap<u64, FakeField>,
    next_field_id: u64,
    webhooks: Vec<FakeWebhook>,
    next_webhook_id: u64,
    /// `incoming_chat_message` events: (contact, message id, Unix seconds).
    chat_events: Vec<(u64, String, u64)>,
    /// Invalid answers per hook destination (Kommo's 2-hour window).
    hook_failures: HashMap<String, Vec<Instant>>,
    disable_after: Option<usize>,

    notes: Vec<FakeNote>,
    next_note_id: u64,
    runs: Vec<SalesbotRun>,
    patches: Vec<LeadPatchRecord>,

    requests: Vec<FakeRequest>,
    api_times: Vec<Instant>,

    codes: HashMap<String, (u64, bool)>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshState>,
    refreshes: u64,
    minted: u64,

    fail_rules: Vec<FailRule>,
    blocked: bool,
    salesbot_errors: usize,
    salesbot_delay: Option<Duration>,
}

impl Account {
    fn mint(&mut self, prefix: &str) -> String {
        self.minted += 1;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("{prefix}.{}.{nanos:08x}", self.minted)
    }

    fn mint_pair(&mut self) -> (String, String) {
        let access = self.mint("fake-access");
        let refresh = self.mint("fake-refresh");
        self.access.insert(
            access.clone(),
            AccessToken {
                expires_at: now_unix() + ACCESS_TOKEN_TTL,
                stale: false,
            },
        );
        self.refresh.insert(refresh.clone(), RefreshState::Live);
        (access, refresh)
    }

    fn token_valid(&self, token: Option<&str>) -> bool {
        token
            .and_then(|t| self.access.get(t))
            .is_some_and(|a| !a.stale && a.expires_at > now_unix())
    }
}

struct Shared {
    state: Mutex<Account>,
    /// `http://127.0.0.1:port`, for `_links`.
    origin: String,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

/// The fake account. Serves on an ephemeral loopback port until dropped.
pub struct FakeKommo {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKommo {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKommo {
    pub async fn start() -> FakeKommo {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Kommo");
        let addr = listener.local_addr().expect("fake Kommo address");
        let shared = Arc::new(Shared {
            state: Mutex::new(Account {
                next_note_id: 76_787_983,
                ..Account::default()
            }),
            origin: format!("http://{addr}"),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake Kommo serves");
        });
        FakeKommo {
            addr,
            shared,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:port` — what `https://{subdomain}.kommo.com` is in production.
    pub fn base_url(&self) -> String {
        self.shared.origin.clone()
    }

    /// `http://127.0.0.1:port/api/v4/`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v4/", self.shared.origin)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Account> {
        self.shared.state.lock().unwrap()
    }

    // ---- OAuth ----

    /// An authorization code, as if an admin had just approved the integration.
    pub fn issue_code(&self) -> String {
        let mut st = self.state();
        let code = st.mint("fake-code");
        st.codes.insert(code.clone(), (now_unix(), false));
        code
    }

    /// A code issued 21 minutes ago (past its 20-minute life).
    pub fn issue_expired_code(&self) -> String {
        let mut st = self.state();
        let code = st.mint("fake-code");
        st.codes
            .insert(code.clone(), (now_unix() - AUTH_CODE_TTL - 60, false));
        code
    }

    /// A valid `(access, refresh)` pair, as an earlier code exchange would have produced.
    pub fn issue_tokens(&self) -> (String, String) {
        self.state().mint_pair()
    }

    /// A long-lived token (private integration): no refresh token.
    pub fn issue_long_lived_token(&self, lifetime: Duration) -> String {
        let mut st = self.state();
        let token = st.mint("fake-long-lived");
        st.access.insert(
            token.clone(),
            AccessToken {
                expires_at: now_unix() + lifetime.as_secs(),
                stale: false,
            },
        );
        token
    }

    /// Makes every access token issued so far stale: the next API call with one gets 401.
    pub fn expire_access_token(&self) {
        for a in self.state().access.values_mut() {
            a.stale = true;
        }
    }

    /// Revokes every live refresh token (as uninstalling the integration would).
    pub fn revoke_refresh_token(&self) {
        for r in self.state().refresh.values_mut() {
            if matches!(r, RefreshState::Live) {
                *r = RefreshState::Revoked;
            }
        }
    }

    /// Successful refresh-token grants so far.
    pub fn refresh_count(&self) -> u64 {
        self.state().refreshes
    }

    /// Every request to `/oauth2/access_token`.
    pub fn token_requests(&self) -> Vec<FakeRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_token())
            .collect()
    }

    // ---- seed data ----

    pub fn add_user(&self, user: FakeUser) {
        self.state().users.insert(user.id, user);
    }

    pub fn add_lead(&self, lead: FakeLead) {
        self.state().leads.insert(lead.id, lead);
    }

    pub fn add_contact(&self, contact: FakeContact) {
        self.state().contacts.insert(contact.id, contact);
    }

    pub fn add_talk(&self, talk: FakeTalk) {
        self.state().talks.insert(talk.id, talk);
    }

    /// Declares a lead custom field: PATCHes naming another field id are rejected with 400.
    pub fn add_lead_field(&self, field_id: u64) {
        self.add_field(FakeField {
            id: field_id,
            name: format!("Field {field_id}"),
            code: None,
            kind: "text".into(),
        });
    }

    /// Declares a lead custom field with its name, code and type.
    pub fn add_field(&self, field: FakeField) {
        let mut st = self.state();
        st.lead_fields.insert(field.id);
        st.field_defs.insert(field.id, field);
    }

    /// The account's lead custom fields.
    pub fn fields(&self) -> Vec<FakeField> {
        self.state().field_defs.values().cloned().collect()
    }

    /// Registers a webhook as an admin would in Kommo's settings.
    pub fn add_webhook(&self, destination: &str, settings: &[&str], disabled: bool) {
        let mut st = self.state();
        st.next_webhook_id += 1;
        let id = 839_656 + st.next_webhook_id;
        st.webhooks.push(FakeWebhook {
            id,
            destination: destination.to_owned(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
            disabled,
        });
    }

    /// Removes the hook with this address, as an admin would in Kommo's settings.
    pub fn remove_webhook(&self, destination: &str) {
        self.state()
            .webhooks
            .retain(|h| h.destination != destination);
    }

    /// The account's webhooks.
    pub fn webhooks(&self) -> Vec<FakeWebhook> {
        self.state().webhooks.clone()
    }

    /// Switches a hook off (or on), as Kommo does after 100 invalid answers in 2 hours.
    pub fn set_webhook_disabled(&self, destination: &str, disabled: bool) {
        for hook in self.state().webhooks.iter_mut() {
            if hook.destination == destination {
                hook.disabled = disabled;
            }
        }
    }

    pub fn lead(&self, id: u64) -> Option<FakeLead> {
        self.state().leads.get(&id).cloned()
    }

    // ---- inspection ----

    pub fn notes(&self) -> Vec<FakeNote> {
        self.state().notes.clone()
    }

    pub fn salesbot_runs(&self) -> Vec<SalesbotRun> {
        self.state().runs.clone()
    }

    pub fn patches(&self) -> Vec<LeadPatchRecord> {
        self.state().patches.clone()
    }

    /// Every request, in arrival order, with the status it got.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.state().requests.clone()
    }

    /// Requests to `/api/…` only.
    pub fn api_requests(&self) -> Vec<FakeRequest> {
        self.requests().into_iter().filter(|r| r.is_api()).collect()
    }

    /// The most `/api/…` requests that arrived within any 1-second window (half-open:
    /// `[t, t + 1 s)`), over the whole life of the fake.
    pub fn max_requests_in_any_second(&self) -> usize {
        let times = self.state().api_times.clone();
        max_in_window(&times, Duration::from_secs(1))
    }

    // ---- fault injection ----

    /// The next `n` requests whose path starts with `path_prefix` get `status` (with the body
    /// Kommo uses for it: HTML for 429/403/502-504, problem+json otherwise).
    pub fn fail_next(&self, path_prefix: &str, status: u16, n: usize) {
        self.state().fail_rules.push(FailRule {
            prefix: path_prefix.to_owned(),
            status,
            remaining: n,
        });
    }

    /// While blocked, every request (tokens included) gets nginx's HTML 403.
    pub fn set_blocked(&self, blocked: bool) {
        self.state().blocked = blocked;
    }

    /// The next `n` Salesbot runs answer 500 after the bot ran (the run is recorded).
    pub fn set_server_error_on_salesbot(&self, n: usize) {
        self.state().salesbot_errors = n;
    }

    /// The most Salesbot runs that were ever awaiting their (delayed) answer at once.
    pub fn max_salesbot_runs_in_flight(&self) -> usize {
        self.shared
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Salesbot runs happen at once but their answer comes `delay` later (a slow Kommo).
    pub fn set_salesbot_delay(&self, delay: Option<Duration>) {
        self.state().salesbot_delay = delay;
    }

    // ---- webhooks out ----

    /// POSTs a form body to `url` as Kommo's webhook client does. Panics if nothing answers.
    pub async fn send_webhook(&self, url: &str, body: &str) -> reqwest::Response {
        webhook_request(url, body, None)
            .await
            .expect("webhook receiver answers")
    }

    /// Like [`FakeKommo::send_webhook`] with Kommo's 2-second patience: a slower answer is an
    /// error (Kommo would count it as a failed delivery).
    pub async fn try_send_webhook(
        &self,
        url: &str,
        body: &str,
    ) -> Result<reqwest::Response, reqwest::Error> {
        webhook_request(url, body, Some(Duration::from_secs(2))).await
    }

    /// Kommo disables a hook after more than `n` invalid answers in 2 hours (100 by default).
    /// A customer wrote `message_id` at `at` (Unix seconds): Kommo records an
    /// `incoming_chat_message` event, whether or not a webhook delivers the message.
    pub fn customer_wrote(&self, contact_id: u64, message_id: &str, at: u64) {
        self.shared
            .state
            .lock()
            .unwrap()
            .chat_events
            .push((contact_id, message_id.to_owned(), at));
    }

    /// The `GET /api/v4/events` requests received.
    pub fn event_requests(&self) -> Vec<FakeRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.starts_with("/api/v4/events"))
            .collect()
    }

    pub fn set_disable_after(&self, n: usize) {
        self.state().disable_after = Some(n);
    }

    /// Delivers `body` to every enabled hook of the account as Kommo does: 2-second patience,
    /// an answer outside 100-299 (or none) is invalid, and a hook with more than the limit of
    /// invalid answers within 2 hours, the latest one invalid, is disabled. Returns each hook's
    /// destination and the status it answered (0: no answer in time).
    pub async fn deliver(&self, body: &str) -> Vec<(String, u16)> {
        let targets: Vec<String> = self
            .state()
            .webhooks
            .iter()
            .filter(|h| !h.disabled)
            .map(|h| h.destination.clone())
            .collect();
        let mut out = Vec::new();
        for destination in targets {
            let status = match self.try_send_webhook(&destination, body).await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            let mut st = self.state();
            let limit = st.disable_after.unwrap_or(100);
            let now = Instant::now();
            let failures = st.hook_failures.entry(destination.clone()).or_default();
            if !(100..300).contains(&status) {
                failures.push(now);
                failures.retain(|t| now.duration_since(*t) < Duration::from_secs(2 * 3600));
                if failures.len() > limit {
                    failures.clear();
                    for hook in st
                        .webhooks
                        .iter_mut()
                        .filter(|h| h.destination == destination)
                    {
                        hook.disabled = true;
                    }
                }
            }
            out.push((destination, status));
        }
        out
    }
}

async fn webhook_request(
    url: &str,
    body: &str,
    timeout: Option<Duration>,
) -> Result<reqwest::Response, reqwest::Error> {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::USER_AGENT, "amoCRM-WebHook-client/1.0")
        .body(body.to_owned());
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    req.send().await
}

fn max_in_window(times: &[Instant], window: Duration) -> usize {
    let mut times = times.to_vec();
    times.sort();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end].duration_since(times[start]) >= window {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

// ---- responses ----

fn with_type(status: u16, content_type: &'static str, body: String) -> Response {
    let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn hal(status: u16, body: Value) -> Response {
    with_type(status, "application/hal+json", body.to_string())
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn problem(status: u16, title: &str, detail: &str) -> Response {
    with_type(
        status,
        "application/problem+json",
        json!({
            "title": title,
            "type": format!("https://httpstatus.es/{status}"),
            "status": status,
            "detail": detail,
        })
        .to_string(),
    )
}

/// The exact 401 body of a live Kommo for a bad bearer token (docs/kommo.md, *Error bodies*).
fn unauthorized() -> Response {
    with_type(
        401,
        "application/problem+json",
        r#"{"title":"Unauthorized","type":"https://httpstatus.es/401","status":401,"detail":"Invalid user name or password"}"#.to_owned(),
    )
}

/// A 400 with `validation-errors`, in the documented shape.
fn validation(errors: &[(&str, String, &str)]) -> Response {
    let errors: Vec<Value> = errors
        .iter()
        .map(|(code, path, detail)| json!({"code": code, "path": path, "detail": detail}))
        .collect();
    with_type(
        400,
        "application/problem+json",
        json!({
            "validation-errors": [{"request_id": "0", "errors": errors}],
            "title": "Bad Request",
            "type": "https://httpstatus.es/400",
            "status": 400,
            "detail": "Request validation failed",
        })
        .to_string(),
    )
}

/// OAuthProblemJson, field order as in the real bodies.
fn oauth_problem(status: u16, hint: &str) -> Response {
    let body = format!(
        r#"{{"hint":{},"title":"{OAUTH_PROBLEM_TITLE}","type":"https://developers.amocrm.ru/v3/errors/OAuthProblemJson","status":{status},"detail":"{OAUTH_PROBLEM_DETAIL}"}}"#,
        Value::String(hint.to_owned())
    );
    with_type(status, "application/json", body)
}

fn html(status: u16, body: &str) -> Response {
    with_type(status, "text/html", body.to_owned())
}

fn injected(status: u16) -> Response {
    match status {
        429 => html(429, HTML_429),
        403 => html(403, HTML_403),
        502..=504 => html(
            status,
            &format!(
                "<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n<center><h1>{status} Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            ),
        ),
        400 => validation(&[(
            "NotSupportedChoice",
            "custom_fields_values.0.field_id".to_owned(),
            "The value you selected is not a valid choice.",
        )]),
        401 => unauthorized(),
        204 => no_content(),
        s => {
            let title = StatusCode::from_u16(s)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("Error");
            problem(s, title, "injected by the fake")
        }
    }
}

// ---- the handler ----

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let body_text = String::from_utf8_lossy(&body).into_owned();
    let salesbot_run = path_is_salesbot_run(&uri);
    let (resp, delay) = {
        let mut st = shared.state.lock().unwrap();
        let resp = respond(
            &mut st,
            &shared.origin,
            &method,
            &path,
            &query,
            bearer.as_deref(),
            &body,
            at,
        );
        st.requests.push(FakeRequest {
            method: method.to_string(),
            path,
            query,
            at,
            status: resp.status().as_u16(),
            bearer,
            body: body_text,
        });
        (resp, salesbot_run.then_some(st.salesbot_delay).flatten())
    };
    if let Some(delay) = delay {
        // The run is recorded (the bot ran); only the answer is late.
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, SeqCst);
        tokio::time::sleep(delay).await;
        shared.in_flight.fetch_sub(1, SeqCst);
    }
    resp
}

fn path_is_salesbot_run(uri: &Uri) -> bool {
    uri.path() == "/api/v2/salesbot/run"
}

#[allow(clippy::too_many_arguments)]
fn respond(
    st: &mut Account,
    origin: &str,
    method: &Method,
    path: &str,
    query: &str,
    bearer: Option<&str>,
    body: &[u8],
    at: Instant,
) -> Response {
    if st.blocked {
        return html(403, HTML_403);
    }
    let is_api = path.starts_with("/api/");
    if is_api {
        st.api_times.push(at);
        let window_start = at.checked_sub(Duration::from_secs(1));
        let recent = st
            .api_times
            .iter()
            .filter(|t| **t <= at && window_start.is_none_or(|w| **t > w))
            .count();
        if recent > RATE_LIMIT {
            return html(429, HTML_429);
        }
    }
    if let Some(rule) = st
        .fail_rules
        .iter_mut()
        .find(|r| r.remaining > 0 && path.starts_with(&r.prefix))
    {
        rule.remaining -= 1;
        return injected(rule.status);
    }
    if path == "/oauth2/access_token" {
        return if *method == Method::POST {
            token_endpoint(st, body)
        } else {
            problem(405, "Method Not Allowed", "Method Not Allowed")
        };
    }
    if !is_api {
        return problem(404, "Not Found", &format!("Cannot {method} {path}!"));
    }
    if !st.token_valid(bearer) {
        return unauthorized();
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let id = |s: &str| s.parse::<u64>().ok();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["api", "v4", "account"]) => hal(200, account_json(origin)),
        ("GET", ["api", "v4", "webhooks"]) => list_webhooks(st, query),
        ("GET", ["api", "v4", "events"]) => list_events(st, query),
        ("POST", ["api", "v4", "webhooks"]) => subscribe_webhook(st, body),
        ("DELETE", ["api", "v4", "webhooks"]) => unsubscribe_webhook(st, body),
        ("GET", ["api", "v4", "leads", "custom_fields"]) => list_fields(st, origin, query),
        ("POST", ["api", "v4", "leads", "custom_fields"]) => create_fields(st, origin, body),
        ("GET", ["api", "v4", "users"]) => users_page(st, origin, query),
        ("GET", ["api", "v4", "users", uid]) => match id(uid).and_then(|u| st.users.get(&u)) {
            Some(u) => hal(200, user_json(u, origin, true, true)),
            None => no_content(),
        },
        ("GET", ["api", "v4", "leads", lid]) => match id(lid).and_then(|l| st.leads.get(&l)) {
            Some(l) => hal(200, lead_json(l, origin, query.contains("contacts"))),
            None => no_content(),
        },
        ("PATCH", ["api", "v4", "leads", lid]) => match id(lid) {
            Some(lid) => patch_lead(st, origin, lid, body),
            None => problem(404, "Not Found", "Not Found"),
        },
        ("GET", ["api", "v4", "leads", lid, "notes"]) => {
            let lid = id(lid).unwrap_or(0);
            let notes: Vec<Value> = st
                .notes
                .iter()
                .filter(|n| n.lead_id == lid)
                .map(|n| note_json(n, origin))
                .collect();
            if notes.is_empty() {
                no_content()
            } else {
                hal(
                    200,
                    json!({
                        "_page": 1,
                        "_links": {"self": {"href": format!("{origin}/api/v4/leads/{lid}/notes")}},
                        "_embedded": {"notes": notes},
                    }),
                )
            }
        }
        ("POST", ["api", "v4", "leads", lid, "notes"]) => match id(lid) {
            Some(lid) => add_notes(st, origin, lid, body),
            None => problem(404, "Not Found", "Not Found"),
        },
        ("GET", ["api", "v4", "contacts", cid]) => {
            match id(cid).and_then(|c| st.contacts.get(&c)) {
                // `_embedded.leads` only with `with=leads` (docs/kommo.md, *Leads, contacts, talks*).
                Some(c) => hal(200, contact_json(c, origin, query.contains("leads"))),
                None => no_content(),
            }
        }
        ("GET", ["api", "v4", "talks", tid]) => match id(tid).and_then(|t| st.talks.get(&t)) {
            Some(t) => hal(200, talk_json(t, origin)),
            // The talks API documents 404 (not 204) for an unknown talk.
            None => problem(404, "Not Found", "Talk not found"),
        },
        ("POST", ["api", "v2", "salesbot", "run"]) => salesbot_run(st, body),
        _ => problem(
            404,
            "Not Found",
            &format!("Cannot {method} {origin}{path}!"),
        ),
    }
}

fn token_endpoint(st: &mut Account, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return oauth_problem(400, "The request is missing a required parameter");
    };
    let field = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("");
    if field("client_id") != CLIENT_ID {
        return oauth_problem(400, "Check the `client_id` parameter");
    }
    if field("client_secret") != CLIENT_SECRET {
        // Unconfirmed hint (league/oauth2-server's wording).
        return oauth_problem(401, "Client authentication failed");
    }
    match field("grant_type") {
        "authorization_code" => {
            let code = field("code").to_owned();
            match st.codes.get_mut(&code) {
                None => return oauth_problem(400, "Cannot decrypt the authorization code"),
                Some((_, true)) => {
                    return oauth_problem(400, "Authorization code has been revoked");
                }
                Some((issued, used)) => {
                    if now_unix() > *issued + AUTH_CODE_TTL {
                        return oauth_problem(400, "Authorization code has expired");
                    }
                    *used = true;
                }
            }
        }
        "refresh_token" => {
            let token = field("refresh_token").to_owned();
            match st.refresh.get_mut(&token) {
                None => return oauth_problem(401, "Cannot decrypt the refresh token"),
                Some(RefreshState::Used | RefreshState::Revoked) => {
                    return oauth_problem(401, "Token has been revoked");
                }
                Some(state) => *state = RefreshState::Used,
            }
            st.refreshes += 1;
        }
        _ => return oauth_problem(400, "Unsupported grant type"),
    }
    let (access, refresh) = st.mint_pair();
    with_type(
        200,
        "application/json",
        json!({
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_TTL,
            "server_time": now_unix(),
            "access_token": access,
            "refresh_token": refresh,
        })
        .to_string(),
    )
}

fn account_json(origin: &str) -> Value {
    json!({
        "id": ACCOUNT_ID,
        "name": ACCOUNT_NAME,
        "subdomain": SUBDOMAIN,
        "created_at": 1_585_299_171,
        "created_by": 0,
        "updated_at": 1_695_482_791,
        "updated_by": 0,
        "current_user_id": 504_141,
        "country": "BR",
        "currency": "BRL",
        "currency_symbol": "R$",
        "customers_mode": "disabled",
        "is_unsorted_on": true,
        "is_loss_reason_enabled": true,
        "is_helpbot_enabled": false,
        "is_technical_account": false,
        "contact_name_display_order": 1,
        "_links": {"self": {"href": format!("{origin}/api/v4/account")}},
    })
}

fn user_json(u: &FakeUser, origin: &str, phone: bool, amojo: bool) -> Value {
    let mut v = json!({
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "lang": "pt",
        "rights": {
            "leads": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
            "contacts": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
            "companies": {"view": "A", "edit": "A", "add": "A", "delete": "A", "export": "A"},
            "tasks": {"edit": "A", "delete": "A"},
            "mail_access": false,
            "catalog_access": false,
            "status_rights": null,
            "is_admin": false,
            "is_free": false,
            "is_active": u.is_active,
            "group_id": null,
            "role_id": null,
        },
        "_links": {"self": {"href": format!("{origin}/api/v4/users/{}/", u.id)}},
    });
    if phone {
        v["phone_number"] = json!(u.phone);
    }
    if amojo {
        v["amojo_id"] = json!(u.amojo_id);
    }
    v
}

fn users_page(st: &Account, origin: &str, query: &str) -> Response {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let page: usize = params
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let limit: usize = params
        .get("limit")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 250);
    let with = params.get("with").cloned().unwrap_or_default();
    let total = st.users.len();
    let page_count = total.div_ceil(limit);
    if total == 0 || page > page_count {
        return no_content();
    }
    let users: Vec<Value> = st
        .users
        .values()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|u| {
            user_json(
                u,
                origin,
                with.contains("phone_number"),
                with.contains("amojo_id"),
            )
        })
        .collect();
    // Kommo's links name the account's own host, not the one the request used.
    let href = |p: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("page", &p.to_string());
        q.append_pair("limit", &limit.to_string());
        if !with.is_empty() {
            q.append_pair("with", &with);
        }
        json!({"href": format!("https://{SUBDOMAIN}.kommo.com/api/v4/users/?{}", q.finish())})
    };
    let mut links = serde_json::Map::new();
    links.insert("self".into(), href(page));
    if page < page_count {
        links.insert("next".into(), href(page + 1));
    }
    links.insert("first".into(), href(1));
    if page > 1 {
        links.insert("prev".into(), href(page - 1));
    }
    hal(
        200,
        json!({
            "_total_items": total,
            "_page": page,
            "_page_count": page_count,
            "_links": links,
            "_embedded": {"users": users},
        }),
    )
}

fn lead_json(l: &FakeLead, origin: &str, with_contacts: bool) -> Value {
    let custom: Value = if l.custom_fields.is_empty() {
        Value::Null
    } else {
        Value::Array(
            l.custom_fields
                .iter()
                .map(|(id, values)| {
                    json!({
                        "field_id": id,
                        "field_name": format!("Field {id}"),
                        "field_code": null,
                        "field_type": "text",
                        "values": values,
                    })
                })
                .collect(),
        )
    };
    let mut embedded = json!({
        "tags": l.tags.iter().enumerate()
            .map(|(i, t)| json!({"id": 100_000 + i as u64, "name": t, "color": null}))
            .collect::<Vec<_>>(),
        "companies": [],
    });
    if with_contacts {
        embedded["contacts"] = Value::Array(
            l.contact_ids
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    json!({
                        "id": c,
                        "is_main": i == 0,
                        "_links": {"self": {"href": format!("{origin}/api/v4/contacts/{c}")}},
                    })
                })
                .collect(),
        );
    }
    json!({
        "id": l.id,
        "name": l.name,
        "price": 0,
        "responsible_user_id": l.responsible_user_id,
        "group_id": 0,
        "status_id": l.status_id,
        "pipeline_id": l.pipeline_id,
        "loss_reason_id": null,
        "source_id": null,
        "created_by": l.responsible_user_id,
        "updated_by": l.responsible_user_id,
        "created_at": 1_695_482_791,
        "updated_at": 1_695_482_791,
        "closed_at": null,
        "closest_task_at": null,
        "is_deleted": false,
        "custom_fields_values": custom,
        "score": null,
        "account_id": ACCOUNT_ID,
        "_links": {"self": {"href": format!("{origin}/api/v4/leads/{}", l.id)}},
        "_embedded": embedded,
    })
}

fn contact_json(c: &FakeContact, origin: &str, with_leads: bool) -> Value {
    let custom = if c.phones.is_empty() {
        Value::Null
    } else {
        json!([{
            "field_id": 3,
            "field_name": "Telefone",
            "field_code": "PHONE",
            "field_type": "multitext",
            "values": c.phones.iter().enumerate()
                .map(|(i, p)| json!({"value": p, "enum_id": i + 1, "enum": "WORK"}))
                .collect::<Vec<_>>(),
        }])
    };
    json!({
        "id": c.id,
        "name": c.name,
        "first_name": c.name,
        "last_name": "",
        "responsible_user_id": c.responsible_user_id,
        "group_id": 0,
        "created_by": c.responsible_user_id,
        "updated_by": c.responsible_user_id,
        "created_at": 1_582_117_331,
        "updated_at": 1_590_943_929,
        "closest_task_at": null,
        "custom_fields_values": custom,
        "account_id": ACCOUNT_ID,
        "_links": {"self": {"href": format!("{origin}/api/v4/contacts/{}", c.id)}},
        "_embedded": {
            "tags": [],
            "leads": if with_leads {
                c.lead_ids.iter().map(|l| json!({"id": l})).collect::<Vec<_>>()
            } else {
                Vec::new()
            },
            "customers": [],
            "catalog_elements": [],
            "companies": [],
        },
    })
}

fn talk_json(t: &FakeTalk, origin: &str) -> Value {
    json!({
        "talk_id": t.id,
        "created_at": 1_631_018_291,
        "updated_at": 1_631_035_929,
        "rate": 0,
        "contact_id": t.contact_id,
        "chat_id": t.chat_id,
        "entity_id": t.lead_id,
        "entity_type": t.lead_id.map(|_| "lead"),
        "is_in_work": t.is_in_work,
        "is_read": true,
        "origin": t.origin,
        "missed_at": null,
        "account_id": ACCOUNT_ID,
        "_links": {"self": {"href": format!("{origin}/api/v4/talks/{}", t.id)}},
        "_embedded": {
            "contacts": [{"id": t.contact_id}],
            "leads": t.lead_id.iter().map(|l| json!({"id": l})).collect::<Vec<_>>(),
            "customers": [],
        },
    })
}

fn note_json(n: &FakeNote, origin: &str) -> Value {
    json!({
        "id": n.id,
        "entity_id": n.lead_id,
        "created_by": 0,
        "updated_by": 0,
        "created_at": 1_695_482_791,
        "updated_at": 1_695_482_791,
        "responsible_user_id": 0,
        "group_id": 0,
        "note_type": n.note_type,
        "params": {"text": n.text},
        "account_id": ACCOUNT_ID,
        "_links": {"self": {"href": format!("{origin}/api/v4/leads/{}/notes/{}", n.lead_id, n.id)}},
    })
}

fn add_notes(st: &mut Account, origin: &str, lead_id: u64, body: &[u8]) -> Response {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) else {
        return validation(&[(
            "InvalidType",
            String::new(),
            "Request body must be an array",
        )]);
    };
    if !st.leads.contains_key(&lead_id) {
        // Unconfirmed: what Kommo says for a note on a missing lead.
        return validation(&[("NotFound", "0.entity_id".to_owned(), "Entity not found")]);
    }
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let note_type = item.get("note_type").and_then(Value::as_str).unwrap_or("");
        let text = item
            .pointer("/params/text")
            .and_then(Value::as_str)
            .unwrap_or("");
        if note_type.is_empty() {
            errors.push((
                "NotBlank",
                format!("{i}.note_type"),
                "This value should not be blank.",
            ));
        } else if note_type == "common" && text.is_empty() {
            errors.push((
                "NotBlank",
                format!("{i}.params.text"),
                "This value should not be blank.",
            ));
        }
    }
    if !errors.is_empty() {
        return validation(&errors);
    }
    let mut created = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let id = st.next_note_id;
        st.next_note_id += 1;
        let note = FakeNote {
            id,
            lead_id,
            note_type: item["note_type"].as_str().unwrap_or("").to_owned(),
            text: item
                .pointer("/params/text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
        let request_id = item
            .get("request_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| i.to_string());
        created.push(json!({
            "id": id,
            "entity_id": lead_id,
            "request_id": request_id,
            "_links": {"self": {"href": format!("{origin}/api/v4/leads/{lead_id}/notes/{id}")}},
        }));
        st.notes.push(note);
    }
    hal(
        200,
        json!({
            "_links": {"self": {"href": format!("{origin}/api/v4/leads/{lead_id}/notes")}},
            "_embedded": {"notes": created},
        }),
    )
}

fn patch_lead(st: &mut Account, origin: &str, lead_id: u64, body: &[u8]) -> Response {
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
        return validation(&[(
            "InvalidType",
            String::new(),
            "Request body must be an object",
        )]);
    };
    if !st.leads.contains_key(&lead_id) {
        // Unconfirmed: what Kommo says for a PATCH of a missing lead.
        return validation(&[("NotFound", "id".to_owned(), "Entity not found")]);
    }
    let fields = patch
        .get("custom_fields_values")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut errors = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        let known = f
            .get("field_id")
            .and_then(Value::as_u64)
            .is_some_and(|id| st.lead_fields.contains(&id));
        if !known {
            errors.push((
                "NotSupportedChoice",
                format!("custom_fields_values.{i}.field_id"),
                "The value you selected is not a valid choice.",
            ));
        }
    }
    if !errors.is_empty() {
        return validation(&errors);
    }
    let names = |key: &str| -> Vec<String> {
        patch
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (add, delete) = (names("tags_to_add"), names("tags_to_delete"));
    let lead = st.leads.get_mut(&lead_id).expect("checked above");
    for f in &fields {
        let id = f["field_id"].as_u64().expect("checked above");
        lead.custom_fields
            .insert(id, f.get("values").cloned().unwrap_or(json!([])));
    }
    for t in add {
        if !lead.tags.contains(&t) {
            lead.tags.push(t);
        }
    }
    lead.tags.retain(|t| !delete.contains(t));
    st.patches.push(LeadPatchRecord {
        lead_id,
        body: Value::Object(patch),
    });
    hal(
        200,
        json!({
            "_links": {"self": {"href": format!("{origin}/api/v4/leads/{lead_id}")}},
            "_embedded": {"leads": [{
                "id": lead_id,
                "updated_at": now_unix(),
                "_links": {"self": {"href": format!("{origin}/api/v4/leads/{lead_id}")}},
            }]},
        }),
    )
}

fn salesbot_run(st: &mut Account, body: &[u8]) -> Response {
    let Ok(Value::Array(tasks)) = serde_json::from_slice::<Value>(body) else {
        return problem(400, "Bad Request", "Request body must be an array");
    };
    if tasks.is_empty() || tasks.len() > 100 {
        return problem(400, "Bad Request", "Between 1 and 100 tasks per request");
    }
    let mut runs = Vec::new();
    for t in &tasks {
        let (Some(bot_id), Some(entity_id), Some(entity_type)) = (
            t.get("bot_id").and_then(Value::as_u64),
            t.get("entity_id").and_then(Value::as_u64),
            t.get("entity_type").and_then(Value::as_u64),
        ) else {
            return problem(
                400,
                "Bad Request",
                "bot_id, entity_id and entity_type required",
            );
        };
        if entity_type != 1 && entity_type != 2 {
            return problem(400, "Bad Request", "entity_type must be 1 or 2");
        }
        runs.push((bot_id, entity_id, entity_type));
    }
    // The bots run; the answer may still be an error (the hazard of blind retries).
    let status = if st.salesbot_errors > 0 {
        st.salesbot_errors -= 1;
        500
    } else {
        202
    };
    for (bot_id, entity_id, entity_type) in runs {
        st.runs.push(SalesbotRun {
            bot_id,
            entity_id,
            entity_type,
            status,
        });
    }
    if status == 500 {
        return problem(500, "Internal Server Error", "Internal Server Error");
    }
    with_type(
        202,
        "application/json",
        json!({"success": true, "_links": {"self": {"href": "/api/v2/salesbot/run", "method": "post"}}})
            .to_string(),
    )
}

// ---- account setup: webhooks and lead custom fields ----

fn webhook_json(h: &FakeWebhook) -> Value {
    json!({
        "id": h.id,
        "destination": h.destination,
        "created_at": 1_589_012_268,
        "updated_at": 1_589_012_268,
        "account_id": ACCOUNT_ID,
        "created_by": 504_141,
        "sort": 1,
        "disabled": h.disabled,
        "settings": h.settings,
    })
}

fn list_events(st: &Account, query: &str) -> Response {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let all = |key: &str| -> Vec<&str> {
        pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| all(key).first().and_then(|v| v.parse::<u64>().ok());
    let types = all("filter[type][]");
    let entities = all("filter[entity][]");
    let wanted = (types.is_empty() || types.contains(&"incoming_chat_message"))
        && (entities.is_empty() || entities.contains(&"contact"));
    let from = one("filter[created_at][from]").unwrap_or(0);
    let to = one("filter[created_at][to]").unwrap_or(u64::MAX);
    let page = one("page").unwrap_or(1).max(1) as usize;
    let limit = one("limit").unwrap_or(50).clamp(1, 100) as usize;
    let mut matching: Vec<&(u64, String, u64)> = st
        .chat_events
        .iter()
        .filter(|(_, _, at)| wanted && *at >= from && *at <= to)
        .collect();
    matching.sort_by_key(|e| std::cmp::Reverse(e.2));
    let events: Vec<Value> = matching
        .iter()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|(contact, message_id, at)| {
            json!({
                "id": format!("01fake{contact}{message_id}"),
                "type": "incoming_chat_message",
                "entity_id": contact,
                "entity_type": "contact",
                "created_by": 0,
                "created_at": at,
                "value_after": [{"message": {"id": message_id}}],
                "value_before": [],
                "account_id": ACCOUNT_ID,
                "_embedded": {"entity": {"id": contact}},
            })
        })
        .collect();
    if events.is_empty() {
        return no_content();
    }
    let href = |p: usize| {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs.iter().filter(|(k, _)| k != "page") {
            q.append_pair(k, v);
        }
        q.append_pair("page", &p.to_string());
        json!({"href": format!("https://{SUBDOMAIN}.kommo.com/api/v4/events?{}", q.finish())})
    };
    let mut links = serde_json::Map::new();
    links.insert("self".into(), href(page));
    if page * limit < matching.len() {
        links.insert("next".into(), href(page + 1));
    }
    hal(
        200,
        json!({"_page": page, "_links": links, "_embedded": {"events": events}}),
    )
}

fn list_webhooks(st: &Account, query: &str) -> Response {
    let filter: Option<String> = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "filter[destination]")
        .map(|(_, v)| v.into_owned());
    let hooks: Vec<Value> = st
        .webhooks
        .iter()
        .filter(|h| filter.as_ref().is_none_or(|d| &h.destination == d))
        .map(webhook_json)
        .collect();
    if hooks.is_empty() {
        return no_content();
    }
    hal(
        200,
        json!({"_total_items": hooks.len(), "_embedded": {"webhooks": hooks}}),
    )
}

fn subscribe_webhook(st: &mut Account, body: &[u8]) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return problem(400, "Bad Request", "Request body is not JSON");
    };
    let destination = req.get("destination").and_then(Value::as_str).unwrap_or("");
    let valid_url = reqwest::Url::parse(destination)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !valid_url {
        return validation(&[(
            "InvalidUrl",
            "destination".into(),
            "This value is not a valid URL.",
        )]);
    }
    let settings: Vec<String> = match req.get("settings").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let mut out = Vec::new();
            for (i, v) in list.iter().enumerate() {
                match v.as_str().filter(|c| WEBHOOK_EVENT_CODES.contains(c)) {
                    Some(code) => out.push(code.to_owned()),
                    None => {
                        return validation(&[(
                            "NotSupportedChoice",
                            format!("settings.{i}"),
                            "The value you selected is not a valid choice.",
                        )]);
                    }
                }
            }
            out
        }
        _ => {
            return validation(&[(
                "NotBlank",
                "settings".into(),
                "This value should not be blank.",
            )]);
        }
    };
    if let Some(hook) = st
        .webhooks
        .iter_mut()
        .find(|h| h.destination == destination)
    {
        hook.settings = settings;
        return hal(201, webhook_json(hook));
    }
    if st.webhooks.len() >= 100 {
        return validation(&[("TooMany", "destination".into(), "Webhooks limit exceeded")]);
    }
    st.next_webhook_id += 1;
    let hook = FakeWebhook {
        id: 1_056_949 + st.next_webhook_id,
        destination: destination.to_owned(),
        settings,
        disabled: false,
    };
    let answer = webhook_json(&hook);
    st.webhooks.push(hook);
    hal(201, answer)
}

fn unsubscribe_webhook(st: &mut Account, body: &[u8]) -> Response {
    let destination = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("destination")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let before = st.webhooks.len();
    st.webhooks.retain(|h| h.destination != destination);
    if st.webhooks.len() == before {
        problem(404, "Not Found", "Webhook not found")
    } else {
        no_content()
    }
}

fn field_json(f: &FakeField, origin: &str) -> Value {
    json!({
        "id": f.id,
        "name": f.name,
        "type": f.kind,
        "account_id": ACCOUNT_ID,
        "code": f.code,
        "sort": 504,
        "is_api_only": false,
        "enums": null,
        "group_id": null,
        "required_statuses": [],
        "is_deletable": true,
        "is_predefined": false,
        "entity_type": "leads",
        "remind": null,
        "_links": {"self": {"href": format!("{origin}/api/v4/leads/custom_fields/{}", f.id)}},
    })
}

fn list_fields(st: &Account, origin: &str, query: &str) -> Response {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let page: usize = params
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let limit: usize = params
        .get("limit")
        .and_then(|p| p.parse().ok())
        .unwrap_or(50)
        .clamp(1, 250);
    let total = st.field_defs.len();
    let page_count = total.div_ceil(limit);
    if total == 0 || page > page_count {
        return no_content();
    }
    let fields: Vec<Value> = st
        .field_defs
        .values()
        .skip((page - 1) * limit)
        .take(limit)
        .map(|f| field_json(f, origin))
        .collect();
    let href = |p: usize| format!("{origin}/api/v4/leads/custom_fields?limit={limit}&page={p}");
    let mut links = json!({"self": {"href": href(page)}});
    if page < page_count {
        links["next"] = json!({"href": href(page + 1)});
    }
    hal(
        200,
        json!({
            "_total_items": fields.len(),
            "_page": page,
            "_page_count": page_count,
            "_links": links,
            "_embedded": {"custom_fields": fields},
        }),
    )
}

fn create_fields(st: &mut Account, origin: &str, body: &[u8]) -> Response {
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) else {
        return problem(400, "Bad Request", "Request body must be an array");
    };
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if item
            .get("name")
            .and_then(Value::as_str)
            .is_none_or(|n| n.trim().is_empty())
        {
            errors.push((
                "NotBlank",
                format!("{i}.name"),
                "This value should not be blank.",
            ));
        }
        if !item
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| FIELD_TYPES.contains(&t))
        {
            errors.push((
                "NotSupportedChoice",
                format!("{i}.type"),
                "The value you selected is not a valid choice.",
            ));
        }
    }
    if !errors.is_empty() {
        return validation(&errors);
    }
    let mut created = Vec::new();
    for item in items {
        st.next_field_id += 1;
        let field = FakeField {
            id: 4_457_223 + st.next_field_id,
            name: item["name"].as_str().unwrap_or("").to_owned(),
            code: item.get("code").and_then(Value::as_str).map(str::to_owned),
            kind: item["type"].as_str().unwrap_or("").to_owned(),
        };
        created.push(field_json(&field, origin));
        st.lead_fields.insert(field.id);
        st.field_defs.insert(field.id, field);
    }
    hal(
        201,
        json!({"_total_items": created.len(), "_embedded": {"custom_fields": created}}),
    )
}
