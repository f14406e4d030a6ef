//! `POST /webhooks/kommo` (the original path): Kommo's webhooks in.
//!
//! Kommo sends form-encoded bodies with PHP bracket keys, several items per POST, redelivers
//! them, and gives up on (and eventually disables) a hook that does not answer 2xx within 2 s.
//! So: check the URL's secret and the account, parse everything first (a malformed body gets a
//! 400 naming the bad key and changes nothing), then apply every item — one contact's items in
//! body order, different contacts concurrently — and answer 2xx only once all are durable. A
//! redelivered body is harmless: message ids are deduplicated by the conversation.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use conversa_actors::{
    Attachment, ContactKey, EngineError, Event, InboundMessage, Links, SellerRef,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{info, warn};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::commands;
use crate::error::ApiError;
use crate::http::auth::secret_matches;
use crate::kommo::webhook::{self, Direction, MessageItem, Webhook, WebhookEvent};
use crate::sellers::Seller;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(with_query_token))
        .routes(routes!(with_path_secret))
}

/// Kommo's body as it sends it: `application/x-www-form-urlencoded` with PHP bracket keys
/// (`message[add][0][contact_id]=1298200`, brackets usually percent-encoded), several entities
/// and items per POST. Understood: `message[add]`, `outgoing_message[add]`, `talk[add|update]`,
/// `leads[add|update|status|responsible|...]`, `unsorted[add]`; others are listed in `unknown`.
/// At least one key has a name and a bracket (`entity[...]`); a key has at most 11 brackets;
/// a deeper key wins over a plain one of the same name, whatever their order; every
/// `account[id]` given is an id (1 to 15 digits) or blank. At most 10,000 pairs, repeated
/// keys counted (the schema sees only the last of each).
#[derive(ToSchema)]
#[schema(value_type = std::collections::HashMap<String, String>, example = json!({
    "message[add][0][id]": "c0925911-ce8f-4994-b117-542b5f28d036",
    "message[add][0][contact_id]": "1298200", "message[add][0][talk_id]": "109",
    "message[add][0][entity_id]": "878244", "message[add][0][entity_type]": "lead",
    "message[add][0][text]": "Oi", "message[add][0][type]": "incoming",
    "account[id]": "29876543", "account[subdomain]": "minhaempresa"}))]
pub struct KommoWebhookForm(pub String);

/// The same tree as JSON (items as an array or as an object keyed `"0"`, `"1"`...; scalars as
/// strings or numbers), as proxies and tests deliver it. At least one member holds a non-null
/// value. Limits the schema does not spell: at most 12 levels deep and 10,000 values; numbers
/// within a double's range; strings without lone surrogates (`\ud800`).
#[derive(ToSchema)]
#[schema(value_type = Object, example = json!({"message": {"add": [{
    "id": "c0925911-ce8f-4994-b117-542b5f28d036", "contact_id": 1298200, "talk_id": 109,
    "entity_id": 878244, "entity_type": "lead", "text": "Oi", "type": "incoming"}]}}))]
pub struct KommoWebhookJson(pub Value);

/// What the webhook did.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"changed": 1, "commands": [], "items": 1, "ok": true,
    "rejected": [], "unchanged": 0, "unknown": [], "unknown_count": 0}))]
pub struct WebhookAnswer {
    pub ok: bool,
    /// Events applied to conversations.
    pub items: u64,
    /// Events that changed something.
    pub changed: u64,
    /// Events that changed nothing (e.g. a redelivered message).
    pub unchanged: u64,
    /// `entity[action]` keys not understood (accepted and ignored), e.g. `task[add]`: the
    /// first 20.
    pub unknown: Vec<String>,
    /// How many keys were not understood in all.
    pub unknown_count: u64,
    /// Items that could not be read, each with the key at fault; the other items were
    /// applied. Also logged, counted (`kommo_webhook_items_rejected_total`) and listed in
    /// `GET /dead-letters`.
    pub rejected: Vec<RejectedItem>,
    /// Seller commands typed in WhatsApp (`/assumir 12345`...) and their answers, or
    /// `{"ok": false, "error": ApiError}` for a refused one.
    #[schema(value_type = Vec<Object>)]
    pub commands: Vec<Value>,
}

/// A webhook item that could not be read.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"key": "message[add][1][contact_id]", "error": "missing"}))]
pub struct RejectedItem {
    /// The bracket key at fault.
    pub key: String,
    pub error: String,
}

/// Kommo webhook (?token=)
///
/// Kommo's webhooks in. Everything is parsed first (a malformed body gets a 400 naming the bad
/// key and changes nothing), then applied, and the answer is 2xx only once every item is
/// durable. Redelivery is harmless (message ids are deduplicated). With `WEBHOOK_SECRET` set,
/// the URL must carry it as `?token=` (or use `/webhooks/kommo/{secret}`).
#[utoipa::path(
    post,
    path = "/webhooks/kommo",
    tag = "webhooks",
    request_body(
        description = "Kommo's webhook: form-encoded bracket keys (as Kommo sends it) or JSON. \
            The body is read by its shape, whatever its Content-Type says: JSON when its first \
            byte after ASCII white space (space, tab, line feed, form feed, carriage return) is \
            `{` or `[` (a form encoder percent-encodes all of these), a form otherwise.",
        content(
            (KommoWebhookForm = "application/x-www-form-urlencoded"),
            (KommoWebhookJson = "application/json"),
        ),
    ),
    security(("webhook_token" = [])),
    responses(
        (status = 200, description = "Every item is durable", body = WebhookAnswer),
        (status = 400, description = "Malformed body: `field` is the bad key (bracket form); nothing changed",
         body = ApiError, example = json!({"error": "bad_request",
            "message": "malformed webhook: message[add][0][contact_id]: expected an unsigned integer, got \"abc\"",
            "field": "message[add][0][contact_id]"})),
        (status = 401, description = "Missing or wrong webhook secret", body = ApiError,
         example = json!({"error": "unauthorized", "message": "missing or wrong webhook secret"})),
        (status = 403, description = "The body comes from another Kommo account", body = ApiError,
         example = json!({"error": "wrong_account", "message": "this webhook comes from another Kommo account"})),
        (status = 503, response = crate::openapi::StoreUnavailable),
    ),
)]
async fn with_query_token(
    State(app): State<AppState>,
    _secret: WebhookSecret,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    ingest(app, &body).await
}

/// Kommo webhook (secret in the path)
///
/// The same as `POST /webhooks/kommo`, with `WEBHOOK_SECRET` as the last path segment (for
/// webhook settings that cannot carry a query string).
#[utoipa::path(
    post,
    path = "/webhooks/kommo/{secret}",
    tag = "webhooks",
    params(("secret" = String, Path, description = "`WEBHOOK_SECRET`")),
    request_body(
        description = "Kommo's webhook: form-encoded bracket keys (as Kommo sends it) or JSON. \
            The body is read by its shape, whatever its Content-Type says: JSON when its first \
            byte after ASCII white space (space, tab, line feed, form feed, carriage return) is \
            `{` or `[` (a form encoder percent-encodes all of these), a form otherwise.",
        content(
            (KommoWebhookForm = "application/x-www-form-urlencoded"),
            (KommoWebhookJson = "application/json"),
        ),
    ),
    security(()),
    responses(
        (status = 200, description = "Every item is durable", body = WebhookAnswer),
        (status = 400, description = "Malformed body: `field` is the bad key (bracket form); nothing changed",
         body = ApiError, example = json!({"error": "bad_request",
            "message": "malformed webhook: message[add][0][contact_id]: expected an unsigned integer, got \"abc\"",
            "field": "message[add][0][contact_id]"})),
        (status = 401, description = "Wrong webhook secret", body = ApiError,
         example = json!({"error": "unauthorized", "message": "missing or wrong webhook secret"})),
        (status = 403, description = "The body comes from another Kommo account", body = ApiError,
         example = json!({"error": "wrong_account", "message": "this webhook comes from another Kommo account"})),
        (status = 503, response = crate::openapi::StoreUnavailable),
    ),
)]
async fn with_path_secret(
    State(app): State<AppState>,
    _secret: WebhookSecret,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    ingest(app, &body).await
}

/// `WEBHOOK_SECRET` as the URL carries it (`?token=` or the last path segment), checked from
/// the request's head: a wrong secret is a 401 before the body is read.
pub struct WebhookSecret;

impl FromRequestParts<AppState> for WebhookSecret {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = &app.0.webhook_secret else {
            return Ok(WebhookSecret);
        };
        let in_path = parts.uri.path().strip_prefix("/webhooks/kommo/").map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        });
        let given = in_path.or_else(|| {
            form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        match given {
            Some(g) if secret_matches(expected, &g) => Ok(WebhookSecret),
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong webhook secret",
            )),
        }
    }
}

/// Reads the body by its shape (JSON or form, whatever its `Content-Type` says), applies it.
async fn ingest(app: AppState, body: &[u8]) -> Result<Json<Value>, ApiError> {
    let hook = webhook::parse(body).map_err(|e| {
        warn!(key = %e.key, error = %e.message, "malformed Kommo webhook");
        ApiError::bad_field(&e.key, format!("malformed webhook: {e}"))
    })?;
    if !hook.shaped {
        return Err(ApiError::bad_field(
            "body",
            "not a Kommo webhook: expected `entity[action][N][field]` keys (e.g. `message[add][0][id]`) or an `account[...]` block",
        ));
    }
    check_account(&app, &hook)?;
    let rejected = reject_items(&app, &hook).await?;
    if !hook.unknown.is_empty() {
        // The keys go to the log (a few, each truncated by the parser), never into a metric
        // label: a client could make a new series of each.
        let first: Vec<&String> = hook.unknown.iter().take(LOGGED_UNKNOWN_KEYS).collect();
        info!(count = hook.unknown.len(), first = ?first, "Kommo webhook carried events conversa does not handle");
        metrics::counter!("kommo_webhook_events_total", "event" => "unknown")
            .increment(hook.unknown.len() as u64);
    }
    for event in &hook.events {
        metrics::counter!("kommo_webhook_events_total", "event" => event_label(event)).increment(1);
    }
    let (hook, seller_commands) = split_seller_commands(&app, hook).await?;
    let authors = chat_authors(&app, &hook).await;
    let plan = plan(&app, &hook, &authors);
    let items = plan.iter().map(|(_, events)| events.len()).sum::<usize>();
    let (changed, duplicates) = apply(&app, plan).await?;
    let mut commands_done = Vec::new();
    for (seller, text) in seller_commands {
        let done = match commands::parse(&text) {
            Ok(command) => commands::execute(&app, &seller, command, "whatsapp").await,
            Err(e) => Err(e),
        };
        match done {
            Ok(answer) => commands_done.push(json!(answer)),
            // The store is down: let Kommo retry the whole body.
            Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            // A refused command is the seller's mistake, not Kommo's: answer 2xx anyway.
            Err(e) => {
                warn!(seller = %seller.id, error = %e.message, "seller command refused");
                commands_done.push(json!({ "ok": false, "error": e }));
            }
        }
    }
    Ok(Json(json!({
        "ok": true,
        "items": items,
        "changed": changed,
        "unchanged": duplicates,
        "unknown": hook.unknown.iter().take(ANSWERED_UNKNOWN_KEYS).collect::<Vec<_>>(),
        "unknown_count": hook.unknown.len(),
        "rejected": rejected,
        "commands": commands_done,
    })))
}

/// Records the items of `hook` that could not be read (log, metric, dead letters): they are
/// answered 2xx with the rest, as a resent body would fail the same way.
async fn reject_items(app: &AppState, hook: &Webhook) -> Result<Vec<RejectedItem>, ApiError> {
    if hook.rejected.is_empty() {
        return Ok(Vec::new());
    }
    let at = conversa_actors::clock::now_millis();
    for e in &hook.rejected {
        warn!(key = %e.key, error = %e.message, "Kommo webhook item rejected; the others apply");
    }
    metrics::counter!("kommo_webhook_items_rejected_total").increment(hook.rejected.len() as u64);
    let records = hook
        .rejected
        .iter()
        .map(|e| crate::dead_letters::DeadLetter {
            at,
            kind: "webhook_item".into(),
            key: e.key.clone(),
            error: e.message.clone(),
        })
        .collect();
    app.0.dead_letters.record(records).await?;
    Ok(hook
        .rejected
        .iter()
        .map(|e| RejectedItem {
            key: e.key.clone(),
            error: e.message.clone(),
        })
        .collect())
}

/// Takes out the incoming messages that are commands typed by a registered seller in their
/// own chat: they are carried out, never sent to n8n.
async fn split_seller_commands(
    app: &AppState,
    mut hook: Webhook,
) -> Result<(Webhook, Vec<(Seller, String)>), ApiError> {
    let mut found = Vec::new();
    let mut kept = Vec::with_capacity(hook.events.len());
    for event in hook.events {
        if let WebhookEvent::Message(m) = &event
            && m.direction == Direction::Incoming
            && commands::looks_like_command(&m.text)
            && let Some(seller) = app.sellers().by_contact_id(m.contact_id).await?
            && seller.active
        {
            found.push((seller, m.text.clone()));
            continue;
        }
        kept.push(event);
    }
    hook.events = kept;
    Ok((hook, found))
}

/// The sellers who wrote the outgoing messages of `hook`, by `author[id]`: a Kommo user's
/// chat (amojo) id, or their user id, mapped through the directory, so a takeover by chat names
/// the same seller as `/vendedores` and `/liberar`. An author the directory does not know (or
/// cannot be asked about) keeps a `kommo:<author id>` identity.
async fn chat_authors(app: &AppState, hook: &Webhook) -> HashMap<String, SellerRef> {
    let mut found = HashMap::new();
    for event in &hook.events {
        let WebhookEvent::Message(m) = event else {
            continue;
        };
        let Some(id) = m.author.as_ref().and_then(|a| a.id.as_deref()) else {
            continue;
        };
        if m.direction != Direction::Outgoing || found.contains_key(id) {
            continue;
        }
        if let Ok(Some(seller)) = app.sellers().by_chat_author(id).await {
            found.insert(
                id.to_owned(),
                SellerRef {
                    id: seller.id,
                    name: seller.name,
                },
            );
        }
    }
    found
}

/// How many unknown keys of one body are named in the log.
const LOGGED_UNKNOWN_KEYS: usize = 10;
/// How many unknown keys of one body are named in the answer (`unknown_count` counts them all).
const ANSWERED_UNKNOWN_KEYS: usize = 20;

/// The metric label of a webhook item: one of a closed set (the parser knows only these).
fn event_label(event: &WebhookEvent) -> &'static str {
    match event {
        WebhookEvent::Message(m) => match m.direction {
            Direction::Incoming => "message:incoming",
            Direction::Outgoing => "message:outgoing",
        },
        WebhookEvent::Talk { action, .. } => match action.as_str() {
            "add" => "talk:add",
            "update" => "talk:update",
            _ => "talk:other",
        },
        WebhookEvent::Lead { action, .. } => match action.as_str() {
            "add" => "leads:add",
            "update" => "leads:update",
            "status" => "leads:status",
            "responsible" => "leads:responsible",
            "delete" => "leads:delete",
            "restore" => "leads:restore",
            _ => "leads:other",
        },
        WebhookEvent::Unsorted { action, .. } => match action.as_str() {
            "add" => "unsorted:add",
            "update" => "unsorted:update",
            "delete" => "unsorted:delete",
            _ => "unsorted:other",
        },
    }
}

/// Refuses a body from another Kommo account than the configured one.
fn check_account(app: &AppState, hook: &Webhook) -> Result<(), ApiError> {
    let configured = app.0.account_id != 0 || app.0.kommo_subdomain.is_some();
    let Some(account) = &hook.account else {
        if configured {
            return Err(ApiError::bad_field(
                "account",
                "the webhook names no Kommo account (`account[id]` / `account[subdomain]`): with KOMMO_ACCOUNT_ID or KOMMO_SUBDOMAIN set, every webhook must",
            ));
        }
        return Ok(());
    };
    let wrong_id = app.0.account_id != 0 && account.id.is_some_and(|id| id != app.0.account_id);
    let wrong_subdomain = match (&app.0.kommo_subdomain, &account.subdomain) {
        (Some(want), Some(got)) => !want.eq_ignore_ascii_case(got),
        _ => false,
    };
    if wrong_id || wrong_subdomain {
        warn!(account = ?account, "webhook from another Kommo account refused");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_account",
            "this webhook comes from another Kommo account",
        ));
    }
    Ok(())
}

/// The engine events each contact receives, contacts in first-seen order, events in body order.
fn plan(
    app: &AppState,
    hook: &Webhook,
    authors: &HashMap<String, SellerRef>,
) -> Vec<(ContactKey, Vec<Event>)> {
    let mut order: Vec<ContactKey> = Vec::new();
    let mut events: HashMap<ContactKey, Vec<Event>> = HashMap::new();
    let mut push = |contact_id: u64, event: Event| {
        let key = app.contact(contact_id);
        events
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(event);
    };
    for item in &hook.events {
        match item {
            WebhookEvent::Message(m) => push(m.contact_id, message_event(m, authors)),
            WebhookEvent::Talk {
                talk_id,
                contact_id: Some(contact_id),
                chat_id,
                lead_id,
                ..
            } => push(
                *contact_id,
                Event::LinksSeen(Links {
                    lead_id: *lead_id,
                    talk_id: *talk_id,
                    chat_id: chat_id.clone(),
                }),
            ),
            WebhookEvent::Lead {
                lead_id,
                contact_ids,
                ..
            } => {
                for contact_id in contact_ids {
                    push(*contact_id, lead_link(*lead_id));
                }
            }
            WebhookEvent::Unsorted {
                lead_id: Some(lead_id),
                contact_id: Some(contact_id),
                ..
            } => push(*contact_id, lead_link(*lead_id)),
            WebhookEvent::Talk { .. } | WebhookEvent::Unsorted { .. } => {}
        }
    }
    order
        .into_iter()
        .map(|k| {
            let e = events.remove(&k).unwrap_or_default();
            (k, e)
        })
        .collect()
}

fn lead_link(lead_id: u64) -> Event {
    Event::LinksSeen(Links {
        lead_id: Some(lead_id),
        ..Links::default()
    })
}

fn message_event(m: &MessageItem, authors: &HashMap<String, SellerRef>) -> Event {
    match m.direction {
        Direction::Incoming => Event::CustomerMessage(InboundMessage {
            id: m.id.clone(),
            text: m.text.clone(),
            created_at: m.created_at,
            attachment: m.attachment.as_ref().map(|a| Attachment {
                kind: a.kind.clone(),
                link: a.link.clone(),
                file_name: a.file_name.clone(),
            }),
            links: Links {
                lead_id: m.lead_id,
                talk_id: m.talk_id,
                chat_id: m.chat_id.clone(),
            },
        }),
        Direction::Outgoing => {
            let author = m.author.clone().unwrap_or_default();
            let known = author.id.as_deref().and_then(|id| authors.get(id)).cloned();
            Event::OutgoingMessage {
                message_id: m.id.clone(),
                text: m.text.clone(),
                author: known.unwrap_or_else(|| SellerRef {
                    id: format!("kommo:{}", author.id.as_deref().unwrap_or("unknown")),
                    name: author.name.unwrap_or_else(|| "Kommo".into()),
                }),
            }
        }
    }
}

/// Applies the plan; returns (events that changed something, events that changed nothing).
async fn apply(
    app: &AppState,
    mut plan: Vec<(ContactKey, Vec<Event>)>,
) -> Result<(usize, usize), ApiError> {
    if plan.len() == 1 {
        // The common body (one contact): no task to spawn and join.
        let (key, events) = plan.pop().expect("one entry");
        return Ok(apply_in_order(app.engine().clone(), key, events).await?);
    }
    let mut tasks = JoinSet::new();
    for (key, events) in plan {
        tasks.spawn(apply_in_order(app.engine().clone(), key, events));
    }
    let (mut changed, mut unchanged) = (0, 0);
    let mut failure = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok((c, u))) => {
                changed += c;
                unchanged += u;
            }
            Ok(Err(e)) => failure = Some(ApiError::from(e)),
            Err(e) => failure = Some(ApiError::from(EngineError::ActorFailed(e.to_string()))),
        }
    }
    match failure {
        // Kommo retries a non-2xx; what was applied is deduplicated on redelivery.
        Some(e) => Err(e),
        None => Ok((changed, unchanged)),
    }
}

/// Applies one contact's events in body order; counts (changed, unchanged).
async fn apply_in_order(
    engine: conversa_actors::Engine,
    key: ContactKey,
    events: Vec<Event>,
) -> Result<(usize, usize), EngineError> {
    let (mut changed, mut unchanged) = (0, 0);
    for event in events {
        let applied = engine.apply(key, event).await?;
        match applied.outcome {
            Ok(o) if o.changed => changed += 1,
            _ => unchanged += 1,
        }
    }
    Ok((changed, unchanged))
}
