//! The tests' fake Kommo account as a program, to try `conversa setup kommo`, `conversa check`
//! and the getting-started guide by hand without a real account:
//!
//! ```sh
//! cargo run --example fake_kommo
//! # KOMMO_API_URL=http://127.0.0.1:41234/api/v4/
//! # KOMMO_ACCESS_TOKEN=fake-long-lived.1.0a1b2c3d
//! ```
//!
//! It prints the two settings, then serves until Ctrl-C; every request it answers is printed
//! (method, path, status).
//! It behaves as `tests/support/fake_kommo.rs` documents (docs/kommo.md's Kommo).

#[path = "../tests/support/fake_kommo.rs"]
mod fake_kommo;

use std::time::Duration;

#[tokio::main]
async fn main() {
    let fake = fake_kommo::FakeKommo::start().await;
    let token = fake.issue_long_lived_token(Duration::from_secs(365 * 86_400));
    println!("KOMMO_API_URL={}", fake.api_url());
    println!("KOMMO_ACCESS_TOKEN={token}");
    println!(
        "# account {} ({})",
        fake_kommo::ACCOUNT_ID,
        fake_kommo::SUBDOMAIN
    );
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                let requests = fake.requests();
                for r in &requests[seen..] {
                    // The path only: a query may carry conversa's webhook secret.
                    println!("{} {} -> {}", r.method, r.path, r.status);
                }
                seen = requests.len();
            }
        }
    }
}
