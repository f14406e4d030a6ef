//! Gap detection: customer messages Kommo received and whose webhook never reached conversa.
//!
//! A webhook can be lost for good: Kommo retries a failed delivery only after 5, 15 and 15
//! minutes and an hour, and a hook Kommo disabled delivers nothing until it is repaired
//! ([`crate::golive::watchdog`]). Every `GAP_CHECK_SECS` (default 60) this reads Kommo's events
//! for incoming chat messages ([`crate::kommo::events`]) from where the last look stopped up to
//! `GAP_GRACE_SECS` (default 120: a webhook may still be on its way) before now, and hands each
//! to its contact's conversation as [`Event::MessageMissed`]. The conversation decides: a
//! message it received changes nothing; one it never received becomes a `message_missed`
//! timeline entry, a note for the seller and, while the bot is in charge, a `missed` dispatch
//! so the AI asks the customer to write again. A webhook that brings the message later is
//! applied like any other and closes the entry.
//!
//! Where the last look stopped is the store value `gap-cursor` (Unix seconds), written only
//! after every event of the window was applied, so a crash or a store outage reads the window
//! again (harmless: the conversation ignores what it knows). After a restart the look goes
//! back to the cursor, at most `GAP_LOOKBACK_MINUTES` (default 60): the messages of a downtime
//! are found. A store without a cursor (conversa's first start on it) starts when the process
//! started: messages from before conversa served the account are not its to report.
//! A registered seller's own chat is skipped: their commands typed in WhatsApp are carried out,
//! never conversations. Several nodes may read the same window; the conversation's compare-and-set makes one of
//! them report a message and the others see it known, so nobody double-reports.
//!
//! Cost: one Kommo request per look and per 100 messages (60 an hour at the defaults, against
//! the account's 7 requests a second), under the client's shared limiter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conversa_actors::conversation::MissedMessage;
use conversa_actors::{ContactKey, Engine, Event};
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::kommo::client::KommoClient;
use crate::sellers::SellerDirectory;

/// Store value: the Unix second the next look starts from.
pub const CURSOR_KEY: &str = "gap-cursor";
/// How many recent missed messages `/ready` lists.
const LISTED: usize = 10;

/// A message reported missed by this node.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Missed {
    pub contact_id: u64,
    pub message_id: String,
    /// When the customer wrote it (Unix milliseconds, as in the dispatch and the conversation).
    pub at: u64,
}

/// What gap detection last did (`/ready`'s `gap_watch`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct GapReport {
    /// Seconds between two looks.
    pub interval_secs: u64,
    /// How long a message may wait for its webhook before it counts as missed.
    pub grace_secs: u64,
    /// The last look (Unix seconds); `null` before the first.
    pub checked_at: Option<u64>,
    /// Kommo's events are read up to this second (Unix seconds).
    pub checked_until: Option<u64>,
    /// `ok`, or `error` (Kommo or the store could not be asked; the window is read again).
    #[schema(value_type = Option<String>)]
    pub state: Option<&'static str>,
    pub error: Option<String>,
    /// Kommo requests the looks made since start.
    pub kommo_requests: u64,
    /// Messages this node reported missed since start.
    pub missed: u64,
    /// The latest of them (at most 10), newest last.
    #[schema(value_type = Vec<Missed>)]
    pub last_missed: VecDeque<Missed>,
}

/// The settings of gap detection.
#[derive(Clone, Copy, Debug)]
pub struct GapSettings {
    pub interval: Duration,
    pub grace: Duration,
    pub lookback: Duration,
}

/// Gap detection on one node.
pub struct GapWatch {
    engine: Engine,
    /// A seller's own chat (commands typed in WhatsApp) is not a customer's conversation.
    sellers: Arc<SellerDirectory>,
    kommo: Arc<KommoClient>,
    account_id: u64,
    settings: GapSettings,
    /// When the process started (Unix seconds): where a store without a cursor starts.
    started: u64,
    report: Mutex<GapReport>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl GapWatch {
    /// `None` when the interval is 0 (gap detection off).
    pub fn new(
        engine: Engine,
        sellers: Arc<SellerDirectory>,
        kommo: Arc<KommoClient>,
        account_id: u64,
        settings: GapSettings,
    ) -> Option<Arc<Self>> {
        (!settings.interval.is_zero()).then(|| {
            Arc::new(GapWatch {
                report: Mutex::new(GapReport {
                    interval_secs: settings.interval.as_secs(),
                    grace_secs: settings.grace.as_secs(),
                    checked_at: None,
                    checked_until: None,
                    state: None,
                    error: None,
                    kommo_requests: 0,
                    missed: 0,
                    last_missed: VecDeque::new(),
                }),
                engine,
                sellers,
                kommo,
                account_id,
                settings,
                started: now_unix(),
            })
        })
    }

    pub fn report(&self) -> GapReport {
        self.report.lock().unwrap().clone()
    }

    /// Looks every interval until the process ends; the first look is one interval after start.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let watch = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(watch.settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // immediate: wait one interval
            loop {
                tick.tick().await;
                watch.look().await;
            }
        })
    }

    /// One look: the window from the cursor to `now - grace`, applied, then the cursor moved.
    pub async fn look(&self) {
        let now = now_unix();
        let result = self.look_at(now).await;
        let mut r = self.report.lock().unwrap();
        r.checked_at = Some(now);
        match result {
            Ok(until) => {
                metrics::counter!("conversa_gap_checks_total", "result" => "ok").increment(1);
                if let Some(until) = until {
                    r.checked_until = Some(until);
                    metrics::gauge!("conversa_gap_checked_until_seconds").set(until as f64);
                }
                r.state = Some("ok");
                r.error = None;
            }
            Err(error) => {
                metrics::counter!("conversa_gap_checks_total", "result" => "error").increment(1);
                warn!(%error, "gap detection: this window is read again at the next look");
                r.state = Some("error");
                r.error = Some(error);
            }
        }
    }

    /// Returns the end of the window read (`None`: nothing to read yet).
    async fn look_at(&self, now: u64) -> Result<Option<u64>, String> {
        let store = self.engine.store();
        let until = now.saturating_sub(self.settings.grace.as_secs());
        let floor = now.saturating_sub(self.settings.lookback.as_secs());
        let cursor = store
            .get_value(CURSOR_KEY)
            .await
            .map_err(|e| format!("store: {e}"))?
            .and_then(|b| std::str::from_utf8(&b).ok()?.trim().parse::<u64>().ok());
        let from = cursor.unwrap_or(self.started).max(floor);
        if until < from {
            // Nothing new to read. When the shared cursor says so, the events are read up to it,
            // by this node's last look or by another node's: the report follows the cursor (a
            // node whose looks another node always beats would otherwise report a stale second).
            return Ok(cursor.filter(|&c| c == from).map(|c| c - 1));
        }
        let read = self.kommo.incoming_messages(from, until).await;
        let pages = match &read {
            Ok(r) => r.pages,
            Err(_) => 1,
        };
        self.report.lock().unwrap().kommo_requests += u64::from(pages);
        let read = read.map_err(|e| format!("Kommo events: {e}"))?;
        if read.truncated {
            warn!(
                from,
                until,
                pages = read.pages,
                "gap detection: more events than it reads in one window; the rest is skipped"
            );
        }
        // One event per contact: its messages of this window make one note and one dispatch.
        let mut by_contact: Vec<(u64, Vec<MissedMessage>)> = Vec::new();
        for m in read.messages {
            let missed = MissedMessage {
                id: m.message_id,
                at: m.at.saturating_mul(1000),
            };
            match by_contact.iter_mut().find(|(c, _)| *c == m.contact_id) {
                Some((_, list)) => list.push(missed),
                None => by_contact.push((m.contact_id, vec![missed])),
            }
        }
        for (contact_id, mut messages) in by_contact {
            let seller = self.sellers.by_contact_id(contact_id).await;
            if seller.is_ok_and(|s| s.is_some_and(|s| s.active)) {
                continue; // a seller's own chat: their commands are carried out, not dispatched
            }
            messages.sort_by_key(|m| m.at);
            let key = ContactKey::new(self.account_id, contact_id);
            let known: Vec<String> = match self.engine.conversation(&key).await {
                Ok(Some((c, _))) => messages
                    .iter()
                    .filter(|m| {
                        c.seen().iter().any(|s| s.id == m.id)
                            || c.missed().iter().any(|x| x.id == m.id)
                    })
                    .map(|m| m.id.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let event = Event::MessagesMissed {
                messages: messages.clone(),
            };
            let applied = self
                .engine
                .apply(key, event)
                .await
                .map_err(|e| format!("contact {contact_id}: {e}"))?;
            if !applied.outcome.is_ok_and(|o| o.changed) {
                continue;
            }
            // What the conversation newly recorded: the messages it did not know before.
            let (applied_now, _) = self
                .engine
                .conversation(&key)
                .await
                .map_err(|e| format!("contact {contact_id}: {e}"))?
                .unwrap_or_else(|| (conversa_actors::Conversation::new(key, 0), 0));
            for m in messages.into_iter().filter(|m| {
                !known.contains(&m.id) && applied_now.missed().iter().any(|x| x.id == m.id)
            }) {
                metrics::counter!("conversa_messages_missed_total").increment(1);
                warn!(
                    contact = contact_id,
                    message_id = %m.id,
                    written_at_ms = m.at,
                    "a customer message never reached conversa: reported on the lead and to n8n"
                );
                let mut r = self.report.lock().unwrap();
                r.missed += 1;
                if r.last_missed.len() == LISTED {
                    r.last_missed.pop_front();
                }
                r.last_missed.push_back(Missed {
                    contact_id,
                    message_id: m.id,
                    at: m.at,
                });
            }
        }
        store
            .put_value(CURSOR_KEY, (until + 1).to_string().as_bytes())
            .await
            .map_err(|e| format!("store: {e}"))?;
        if cursor.is_none() {
            info!(from, until, "gap detection: first window read");
        }
        Ok(Some(until))
    }
}
