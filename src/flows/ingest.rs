//! A Kommo webhook body in: the use case behind `POST /webhooks/kommo`.
//!
//! Kommo redelivers bodies and gives up on (and eventually disables) a hook that does not
//! answer 2xx within 2 s. So everything is parsed first (a malformed body changes nothing),
//! the account is checked, items that cannot be read are set aside (logged, counted, listed in
//! the dead letters) while the others apply, seller commands typed in WhatsApp are carried out
//! instead of reaching n8n, and every other item is applied — one contact's items in body
//! order, different contacts concurrently. A redelivered body is harmless: message ids are
//! deduplicated by the conversation. See `docs/kommo.md` for the wire format.

use std::collections::HashMap;

use conversa_actors::{
    Attachment, ContactKey, EngineError, Event, InboundMessage, Links, SellerRef,
};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::flows::FlowError;
use crate::flows::commands::{self, CommandAnswer};
use crate::kommo::webhook::{self, Direction, MessageItem, Webhook, WebhookEvent};
use crate::sellers::Seller;
use crate::state::AppState;

/// What a webhook body did.
#[derive(Debug)]
pub struct Ingested {
    /// Events applied to conversations.
    pub items: usize,
    /// Events that changed something.
    pub changed: usize,
    /// Events that changed nothing (e.g. a redelivered message).
    pub unchanged: usize,
    /// `entity[action]` keys not understood (accepted and ignored).
    pub unknown: Vec<String>,
    /// Items that could not be read: the key at fault and why.
    pub rejected: Vec<(String, String)>,
    /// The seller commands typed in WhatsApp, each carried out or refused.
    pub commands: Vec<Result<CommandAnswer, FlowError>>,
}

/// Reads the body by its shape (JSON or form, whatever its `Content-Type` says), applies it.
/// Nothing is applied when the body is malformed or from another account; every applied item
/// is durable when this returns `Ok`.
pub async fn ingest(app: &AppState, body: &[u8]) -> Result<Ingested, FlowError> {
    let hook = webhook::parse(body).map_err(|e| {
        warn!(key = %e.key, error = %e.message, "malformed Kommo webhook");
        FlowError::invalid(e.key.clone(), format!("malformed webhook: {e}"))
    })?;
    if !hook.shaped {
        return Err(FlowError::invalid(
            "body",
            "not a Kommo webhook: expected `entity[action][N][field]` keys (e.g. `message[add][0][id]`) or an `account[...]` block",
        ));
    }
    check_account(app, &hook)?;
    let rejected = reject_items(app, &hook).await?;
    if !hook.unknown.is_empty() {
        // The keys go to the log (a few, each truncated by the parser), never into a metric
        // label: a client could make a new series of each.
        let first: Vec<&String> = hook.unknown.iter().take(LOGGED_UNKNOWN_KEYS).collect();
        info!(count = hook.unknown.len(), first = ?first, "Kommo webhook carried events conversa does not handle");
        metrics::counter!("conversa_kommo_webhook_events_total", "event" => "unknown")
            .increment(hook.unknown.len() as u64);
    }
    for event in &hook.events {
        metrics::counter!("conversa_kommo_webhook_events_total", "event" => event_label(event))
            .increment(1);
    }
    let (hook, seller_commands) = split_seller_commands(app, hook).await?;
    let authors = chat_authors(app, &hook).await;
    let plan = plan(app, &hook, &authors);
    let items = plan.iter().map(|(_, events)| events.len()).sum::<usize>();
    let (changed, unchanged) = apply(app, plan).await?;
    let mut commands_done = Vec::new();
    for (seller, text) in seller_commands {
        let done = match commands::parse(&text) {
            Ok(command) => commands::execute(app, &seller, command, "whatsapp").await,
            Err(e) => Err(e),
        };
        match done {
            // The store is down: let Kommo retry the whole body.
            Err(e) if e.is_unavailable() => return Err(e),
            // A refused command is the seller's mistake, not Kommo's: answered 2xx anyway.
            Err(e) => {
                warn!(seller = %seller.id, error = %e, "seller command refused");
                commands_done.push(Err(e));
            }
            Ok(answer) => commands_done.push(Ok(answer)),
        }
    }
    Ok(Ingested {
        items,
        changed,
        unchanged,
        unknown: hook.unknown,
        rejected,
        commands: commands_done,
    })
}

/// Records the items of `hook` that could not be read (log, metric, dead letters): they are
/// answered 2xx with the rest, as a resent body would fail the same way.
async fn reject_items(app: &AppState, hook: &Webhook) -> Result<Vec<(String, String)>, FlowError> {
    if hook.rejected.is_empty() {
        return Ok(Vec::new());
    }
    let at = conversa_actors::clock::now_millis();
    for e in &hook.rejected {
        warn!(key = %e.key, error = %e.message, "Kommo webhook item rejected; the others apply");
    }
    metrics::counter!("conversa_kommo_webhook_items_rejected_total")
        .increment(hook.rejected.len() as u64);
    let records = hook
        .rejected
        .iter()
        .enumerate()
        .map(|(n, e)| {
            crate::dead_letters::DeadLetter::webhook_item(at, n, e.key.clone(), e.message.clone())
        })
        .collect();
    app.0.dead_letters.record(records).await?;
    Ok(hook
        .rejected
        .iter()
        .map(|e| (e.key.clone(), e.message.clone()))
        .collect())
}

/// Takes out the incoming messages that are commands typed by a registered seller in their
/// own chat: they are carried out, never sent to n8n.
async fn split_seller_commands(
    app: &AppState,
    mut hook: Webhook,
) -> Result<(Webhook, Vec<(Seller, String)>), FlowError> {
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
fn check_account(app: &AppState, hook: &Webhook) -> Result<(), FlowError> {
    let configured = app.0.account_id != 0 || app.0.kommo_subdomain.is_some();
    let Some(account) = &hook.account else {
        if configured {
            return Err(FlowError::invalid(
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
        return Err(FlowError::Forbidden {
            code: "wrong_account",
            message: "this webhook comes from another Kommo account".into(),
        });
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
) -> Result<(usize, usize), EngineError> {
    if plan.len() == 1 {
        // The common body (one contact): no task to spawn and join.
        let (key, events) = plan.pop().expect("one entry");
        return apply_in_order(app.engine().clone(), key, events).await;
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
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(EngineError::ActorFailed(e.to_string())),
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
