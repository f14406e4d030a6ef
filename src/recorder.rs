//! The process-wide Prometheus recorder behind `GET /metrics`: installed once, its histogram
//! samples folded into buckets every few seconds so a node nobody scrapes stays flat, and
//! [`CATALOGUE`]: every metric conversa exports, with its `# HELP` text (one `conversa_` prefix;
//! `tests/metrics.rs` checks that nothing is exported outside it, and that the alert rules and
//! the dashboard in `deploy/` name only metrics in it).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static METRICS: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();

/// How often histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder, installed on first use.
pub fn handle() -> Option<PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .install_recorder()
                .ok()?;
            // The recorder keeps every histogram sample until upkeep folds them into buckets;
            // a scrape does that too, but a node nobody scrapes would grow without bound
            // (≈ 30 bytes per request). Fold them every few seconds on a thread of its own.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(METRICS_UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                })
                .ok()?;
            describe();
            // Families that must show from the first scrape, even at zero.
            for name in [
                "conversa_actor_activations_total",
                "conversa_actor_passivations_total",
                "conversa_actor_restarts_total",
                "conversa_store_cas_conflicts_total",
                "conversa_kommo_limiter_waits_total",
                "conversa_kommo_token_refreshes_total",
                "conversa_effects_dead_lettered_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            metrics::gauge!(
                "conversa_build_info",
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => env!("CONVERSA_GIT_COMMIT")
            )
            .set(1.0);
            Some(handle)
        })
        .clone()
}

/// What a metric is, for `# HELP` and `# TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric conversa exports: name, kind, help.
pub const CATALOGUE: &[(&str, Kind, &str)] = &[
    (
        "conversa_build_info",
        Kind::Gauge,
        "Always 1; the labels say the version and the git commit running.",
    ),
    (
        "conversa_http_requests_total",
        Kind::Counter,
        "HTTP requests answered, by route template, method and status.",
    ),
    (
        "conversa_http_request_duration_seconds",
        Kind::Histogram,
        "HTTP request latency, by route template, method and status.",
    ),
    (
        "conversa_http_connections_refused_total",
        Kind::Counter,
        "Connections refused at the connection cap (MAX_CONNECTIONS).",
    ),
    (
        "conversa_http_connections_evicted_total",
        Kind::Counter,
        "Connections closed for a slow or idle request head (HEADER_READ_TIMEOUT_SECS).",
    ),
    (
        "conversa_kommo_webhook_events_total",
        Kind::Counter,
        "Kommo webhook items received, by kind (message:incoming, talk:add, ...).",
    ),
    (
        "conversa_kommo_webhook_items_rejected_total",
        Kind::Counter,
        "Kommo webhook items that could not be read (kept in GET /dead-letters).",
    ),
    (
        "conversa_events_total",
        Kind::Counter,
        "Events applied to conversations, by event kind.",
    ),
    (
        "conversa_effects_total",
        Kind::Counter,
        "Outbox effects executed (n8n dispatches, replies, notes), by kind and result.",
    ),
    (
        "conversa_effect_seconds",
        Kind::Histogram,
        "Time one effect attempt took, by kind.",
    ),
    (
        "conversa_effects_running",
        Kind::Gauge,
        "Effects being executed now.",
    ),
    (
        "conversa_effects_dead_lettered_total",
        Kind::Counter,
        "Effects given up after DEAD_LETTER_AFTER_MINUTES of failures.",
    ),
    (
        "conversa_outbox_pending_contacts",
        Kind::Gauge,
        "Contacts with effects waiting in the outbox (n8n or Kommo down, or not configured).",
    ),
    (
        "conversa_replies_total",
        Kind::Counter,
        "n8n replies accepted, or dropped with the reason (human_assigned, superseded, ...).",
    ),
    (
        "conversa_actors_active",
        Kind::Gauge,
        "Contact actors in memory.",
    ),
    (
        "conversa_actor_activations_total",
        Kind::Counter,
        "Contact actors started from their snapshot.",
    ),
    (
        "conversa_actor_passivations_total",
        Kind::Counter,
        "Contact actors stopped after IDLE_TIMEOUT_SECS.",
    ),
    (
        "conversa_actor_restarts_total",
        Kind::Counter,
        "Contact actors restarted after a panic.",
    ),
    (
        "conversa_snapshots_trimmed_total",
        Kind::Counter,
        "Snapshots trimmed to MAX_SNAPSHOT_BYTES.",
    ),
    (
        "conversa_store_seconds",
        Kind::Histogram,
        "Store operation latency, by operation.",
    ),
    (
        "conversa_store_cas_conflicts_total",
        Kind::Counter,
        "Snapshot writes that met a newer version (another node) and were re-applied.",
    ),
    (
        "conversa_kommo_calls_total",
        Kind::Counter,
        "Kommo API calls, by endpoint and status (429 and 403 show here).",
    ),
    (
        "conversa_kommo_call_seconds",
        Kind::Histogram,
        "Kommo API call latency, by endpoint.",
    ),
    (
        "conversa_kommo_limiter_waits_total",
        Kind::Counter,
        "Kommo calls that waited for the 7 requests/s limiter.",
    ),
    (
        "conversa_kommo_token_refreshes_total",
        Kind::Counter,
        "Kommo OAuth token refreshes.",
    ),
    (
        "conversa_kommo_reauthorize_needed",
        Kind::Gauge,
        "1 when Kommo needs a new authorisation (replies wait until then), else 0.",
    ),
    (
        "conversa_kommo_blocked",
        Kind::Gauge,
        "1 while Kommo blocks the account (403: no call goes out), else 0.",
    ),
    (
        "conversa_webhook_ok",
        Kind::Gauge,
        "1 when the Kommo webhook was registered, enabled and complete at the watchdog's last look, else 0.",
    ),
    (
        "conversa_webhook_repairs_total",
        Kind::Counter,
        "Times the watchdog registered the Kommo webhook again, by what was wrong.",
    ),
    (
        "conversa_gap_checks_total",
        Kind::Counter,
        "Looks of gap detection at Kommo's events, by result (ok, error).",
    ),
    (
        "conversa_gap_checked_until_seconds",
        Kind::Gauge,
        "Unix second up to which Kommo's events were read for missed messages.",
    ),
    (
        "conversa_messages_missed_total",
        Kind::Counter,
        "Customer messages Kommo received whose webhook never reached conversa (reported on the lead and to n8n).",
    ),
    (
        "conversa_customers_answered",
        Kind::Gauge,
        "1 when every go-live check passed at the last round (/ready's go_live), else 0.",
    ),
    (
        "conversa_outbox_oldest_seconds",
        Kind::Gauge,
        "Seconds the oldest effect has waited in the outbox (sampled over up to 50 contacts with work waiting; 0 when none waits).",
    ),
    (
        "conversa_dead_letters_replayed_total",
        Kind::Counter,
        "Dead letters an operator ran again (POST /dead-letters/{id}/replay).",
    ),
    (
        "conversa_dead_letters",
        Kind::Gauge,
        "Records kept in GET /dead-letters: webhook items that could not be read and effects given up on.",
    ),
];

fn describe() {
    for (name, kind, help) in CATALOGUE {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}
