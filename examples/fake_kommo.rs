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
//! (method, path, status). Lines typed on its standard input act as the account's customers
//! and admins:
//!
//! ```text
//! contact 1298200 878244          a contact with a lead (notes and replies find the lead)
//! say 1298200 m-1 Oi, tudo bem?   a customer writes: Kommo records it and sends the webhook
//! lose 1298200 m-2                a customer writes and the webhook is lost (gap detection)
//! notes                           the notes written on leads so far
//! block | unblock                 Kommo blocks the account (403) / lifts the block
//! ```
//!
//! It behaves as `tests/support/fake_kommo.rs` documents (docs/kommo.md's Kommo).

#[path = "../tests/support/fake_kommo.rs"]
mod fake_kommo;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncBufReadExt;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Carries out one line typed on standard input.
async fn command(fake: &fake_kommo::FakeKommo, leads: &mut HashMap<u64, u64>, line: &str) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
    match words.as_slice() {
        ["contact", ..] if number(1).is_some() && number(2).is_some() => {
            let (contact, lead) = (number(1).unwrap(), number(2).unwrap());
            let mut c = fake_kommo::FakeContact::new(contact, "Cliente");
            c.lead_ids = vec![lead];
            fake.add_contact(c);
            let mut l = fake_kommo::FakeLead::new(lead);
            l.contact_ids = vec![contact];
            fake.add_lead(l);
            leads.insert(contact, lead);
            println!("# contact {contact} with lead {lead}");
        }
        ["say", _, id, text @ ..] if number(1).is_some() => {
            let contact = number(1).unwrap();
            fake.customer_wrote(contact, id, now_unix());
            let lead = leads.get(&contact).copied().unwrap_or(contact + 1_000_000);
            let message = fake_kommo::FakeMessage::incoming(id, contact, lead, 1, &text.join(" "));
            let body = fake_kommo::message_add_form(
                fake_kommo::ACCOUNT_ID,
                fake_kommo::SUBDOMAIN,
                &[message],
            );
            for (destination, status) in fake.deliver(&body).await {
                let shown = destination.split("/webhooks/").next().unwrap_or("");
                println!("# webhook to {shown}/webhooks/… -> {status}");
            }
        }
        ["lose", _, id] if number(1).is_some() => {
            fake.customer_wrote(number(1).unwrap(), id, now_unix());
            println!("# {id} recorded in Kommo's events; no webhook sent");
        }
        ["notes"] => {
            for n in fake.notes() {
                println!("# note on lead {}: {}", n.lead_id, n.text);
            }
        }
        ["block"] => fake.set_blocked(true),
        ["unblock"] => fake.set_blocked(false),
        [] => {}
        _ => println!(
            "# commands: contact CONTACT LEAD | say CONTACT ID TEXT | lose CONTACT ID | notes | block | unblock"
        ),
    }
}

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
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut input_open = true;
    let mut leads = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            line = input.next_line(), if input_open => match line {
                Ok(Some(line)) => command(&fake, &mut leads, &line).await,
                _ => input_open = false,
            },
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
