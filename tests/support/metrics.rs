//! Reading the service's Prometheus text (`/metrics`, or the process's own recorder when a test
//! drives a client directly).

/// The value of one series, e.g. `conversa_kommo_calls_total{endpoint="GET /api/v4/account",status="200"}`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Installs the process's Prometheus recorder (the service's own): what is recorded before
/// it is installed is lost, so a test calls this first.
pub fn install() {
    conversa::recorder::handle().expect("the Prometheus recorder installs");
}

/// The process's Prometheus recorder, rendered.
pub fn rendered() -> String {
    conversa::recorder::handle()
        .expect("the Prometheus recorder installs")
        .render()
}
