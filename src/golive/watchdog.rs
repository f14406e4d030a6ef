//! The webhook watchdog: every `WEBHOOK_WATCH_SECS` (default 300) it reads the account's
//! webhooks and, when conversa's is missing, disabled or short of an event, registers it again.
//!
//! Why: Kommo retries a failed delivery only after 5, 15, 15 minutes and an hour, and switches a
//! hook off after more than 100 invalid answers in 2 hours, until an admin turns it back on by
//! hand; meanwhile no customer message reaches conversa and nobody is told. The watchdog makes
//! that a WARN log line, a metric (`conversa_webhook_repairs_total{was}`,
//! `conversa_webhook_ok`) and a field of `/ready` (`webhook_watch`), and repairs it as
//! `conversa setup kommo` would ([`super::webhook`]).
//!
//! The first look is one interval after start (a node restarting in a loop must not hammer
//! Kommo); several nodes may repair at once — registering is idempotent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing::{error, info, warn};
use utoipa::ToSchema;

use super::target::Target;
use super::webhook::{self, Standing};
use crate::kommo::client::KommoClient;

/// One repair.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Repair {
    /// When (Unix seconds).
    pub at: u64,
    /// How the hook stood: `missing`, `disabled` or `missing_events`.
    #[schema(value_type = String)]
    pub was: &'static str,
    /// Kommo lists it right again.
    pub ok: bool,
    pub detail: String,
}

/// What the watchdog last saw and did (`/ready`'s `webhook_watch`).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WatchReport {
    /// Seconds between two looks.
    pub interval_secs: u64,
    /// The last look (Unix seconds); `null` before the first.
    pub checked_at: Option<u64>,
    /// How the hook stood then: `ok`, `missing`, `disabled`, `missing_events`, or `error` (Kommo
    /// could not be asked).
    #[schema(value_type = Option<String>)]
    pub state: Option<&'static str>,
    pub error: Option<String>,
    /// Times it registered the hook again since start.
    pub repairs: u64,
    pub last_repair: Option<Repair>,
}

/// The watchdog of one node.
pub struct WebhookWatch {
    target: Target,
    destination: String,
    kommo: Arc<KommoClient>,
    interval: Duration,
    report: Mutex<WatchReport>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl WebhookWatch {
    /// `None` when there is nothing to watch: no Kommo, no `PUBLIC_URL` or `WEBHOOK_SECRET`, or
    /// an interval of 0.
    pub fn new(target: Target, kommo: Arc<KommoClient>, interval: Duration) -> Option<Arc<Self>> {
        let destination = target.webhook_destination()?;
        (!interval.is_zero()).then(|| {
            Arc::new(WebhookWatch {
                report: Mutex::new(WatchReport {
                    interval_secs: interval.as_secs(),
                    checked_at: None,
                    state: None,
                    error: None,
                    repairs: 0,
                    last_repair: None,
                }),
                target,
                destination,
                kommo,
                interval,
            })
        })
    }

    pub fn report(&self) -> WatchReport {
        self.report.lock().unwrap().clone()
    }

    /// Runs until the process ends.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let watch = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(watch.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate: wait one interval
            loop {
                tick.tick().await;
                watch.look().await;
            }
        })
    }

    /// One look, and a repair when needed.
    pub async fn look(&self) {
        let shown = self.target.webhook_destination_shown();
        let standing = match webhook::standing(&self.kommo, &self.destination).await {
            Ok(s) => s,
            Err(e) => {
                let error = self.target.scrub(&e.to_string());
                warn!(%error, "webhook watchdog: cannot read the account's webhooks");
                let mut r = self.report.lock().unwrap();
                r.checked_at = Some(now_unix());
                r.state = Some("error");
                r.error = Some(error);
                return;
            }
        };
        let was = standing.label();
        metrics::gauge!("conversa_webhook_ok").set(f64::from(u8::from(was == "ok")));
        {
            let mut r = self.report.lock().unwrap();
            r.checked_at = Some(now_unix());
            r.state = Some(was);
            r.error = None;
        }
        if matches!(standing, Standing::Right(_)) {
            return;
        }
        let action = webhook::plan(&standing, &shown);
        warn!(was, destination = %shown, "webhook watchdog: the Kommo webhook is not right; {action}");
        metrics::counter!("conversa_webhook_repairs_total", "was" => was).increment(1);
        let result = webhook::repair(&self.kommo, &self.destination, &standing).await;
        let repair = match result {
            Ok(_) => {
                info!(was, destination = %shown, "webhook watchdog: repaired");
                metrics::gauge!("conversa_webhook_ok").set(1.0);
                Repair {
                    at: now_unix(),
                    was,
                    ok: true,
                    detail: format!("{action}: done"),
                }
            }
            Err(e) => {
                let error = self.target.scrub(&e.to_string());
                error!(was, destination = %shown, %error, "webhook watchdog: repair failed");
                Repair {
                    at: now_unix(),
                    was,
                    ok: false,
                    detail: format!("could not {action}: {error}"),
                }
            }
        };
        let mut r = self.report.lock().unwrap();
        r.repairs += 1;
        if repair.ok {
            r.state = Some("ok");
        }
        r.last_repair = Some(repair);
    }
}
