//! `POST /webhooks/kommo` (the original path): Kommo's webhooks in.
//!
//! Kommo sends form-encoded bodies with PHP bracket keys, several items per POST, redelivers
//! them, and gives up on (and eventually disables) a hook that does not answer 2xx within 2 s.
//! So: check the URL's secret and the account, parse everything first (a malformed body gets a
//! 400 naming the bad key and changes nothing), then apply every item — one contact's items in
//! body order, different contacts concurrently — and answer 2xx only once all are durable. A
//! redelivered body is harmless: message ids are deduplicated by the conversation.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use conversa_actors::{
    Attachment, ContactKey, EngineError, Event, InboundMessage, Links, SellerRef,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::app::AppState;
use crate::commands;
use crate::error::ApiError;
use crate::http::auth::secret_matches;
use crate::kommo::webhook::{self, Direction, MessageItem, Webhook, WebhookEvent};
use crate::sellers::Seller;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/kommo", post(with_query_token))
        .route("/webhooks/kommo/{secret}", post(with_path_secret))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn with_query_token(
    State(app): State<AppState>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, q.token.as_deref())?;
    ingest(app, &headers, &body).await
}

async fn with_path_secret(
    State(app): State<AppState>,
    Path(secret): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    authorize(&app, Some(&secret))?;
    ingest(app, &headers, &body).await
}

fn authorize(app: &AppState, given: Option<&str>) -> Result<(), ApiError> {
    match &app.0.webhook_secret {
        None => Ok(()),
        Some(expected) if given.is_some_and(|g| secret_matches(expected, g)) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong webhook secret",
        )),
    }
}

async fn ingest(app: AppState, headers: &HeaderMap, body: &[u8]) -> Result<Json<Value>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let hook = webhook::parse(content_type, body).map_err(|e| {
        warn!(key = %e.key, error = %e.message, "malformed Kommo webhook");
        ApiError::bad_field(&e.key, format!("malformed webhook: {e}"))
    })?;
    check_account(&app, &hook)?;
    if !hook.unknown.is_empty() {
        info!(unknown = ?hook.unknown, "Kommo webhook carried events conversa does not handle");
    }
    let (hook, seller_commands) = split_seller_commands(&app, hook).await?;
    let plan = plan(&app, &hook);
    let items = plan.iter().map(|(_, events)| events.len()).sum::<usize>();
    let (changed, duplicates) = apply(&app, plan).await?;
    let mut commands_done = Vec::new();
    for (seller, text) in seller_commands {
        let done = match commands::parse(&text) {
            Ok(command) => commands::execute(&app, &seller, command, "whatsapp").await,
            Err(e) => Err(e),
        };
        match done {
            Ok(answer) => commands_done.push(answer),
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
        "unknown": hook.unknown,
        "commands": commands_done,
    })))
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

/// Refuses a body from another Kommo account than the configured one.
fn check_account(app: &AppState, hook: &Webhook) -> Result<(), ApiError> {
    let Some(account) = &hook.account else {
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
fn plan(app: &AppState, hook: &Webhook) -> Vec<(ContactKey, Vec<Event>)> {
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
            WebhookEvent::Message(m) => push(m.contact_id, message_event(m)),
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

fn message_event(m: &MessageItem) -> Event {
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
            Event::OutgoingMessage {
                message_id: m.id.clone(),
                text: m.text.clone(),
                author: SellerRef {
                    id: format!("kommo:{}", author.id.as_deref().unwrap_or("unknown")),
                    name: author.name.unwrap_or_else(|| "Kommo".into()),
                },
            }
        }
    }
}

/// Applies the plan; returns (events that changed something, events that changed nothing).
async fn apply(
    app: &AppState,
    plan: Vec<(ContactKey, Vec<Event>)>,
) -> Result<(usize, usize), ApiError> {
    let mut tasks = JoinSet::new();
    for (key, events) in plan {
        let engine = app.engine().clone();
        tasks.spawn(async move {
            let (mut changed, mut unchanged) = (0, 0);
            for event in events {
                let applied = engine.apply(key, event).await?;
                match applied.outcome {
                    Ok(o) if o.changed => changed += 1,
                    _ => unchanged += 1,
                }
            }
            Ok::<_, EngineError>((changed, unchanged))
        });
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
