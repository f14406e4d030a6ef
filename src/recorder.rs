//! The process-wide Prometheus recorder behind `GET /metrics`: installed once, its histogram
//! samples folded into buckets every few seconds so a node nobody scrapes stays flat.

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
            // Families that must show from the first scrape, even at zero.
            for name in [
                "conversa_actor_activations_total",
                "conversa_actor_passivations_total",
                "conversa_actor_restarts_total",
                "conversa_store_cas_conflicts_total",
                "kommo_limiter_waits_total",
                "kommo_token_refreshes_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            Some(handle)
        })
        .clone()
}
