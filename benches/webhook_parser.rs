//! Criterion benches of the Kommo webhook parser (`conversa::kommo::webhook`).
//!
//! * `form/single_message`: the WhatsApp Lite capture of docs/kommo.md (*Capture B*) encoded as
//!   Kommo sends it (form-urlencoded, percent-encoded brackets), about 600 B.
//! * `form/ten_messages`: the same message ten times (`message[add][0..9]`) in one POST.
//! * `json/single_message`: the capture as the JSON tree (`parse_json`), as proxies forward it.
//!
//! Run with `cargo bench --bench webhook_parser`. docs/architecture.md (*Measured*) records ≈ 3.7 µs for a
//! 600 B body with borrowed `form_urlencoded` pairs: the form figure should be of that order.

use std::hint::black_box;

use conversa::kommo::webhook::{parse_form, parse_json};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// The fields of `message[add][N]` in the capture, in its order.
fn capture_item(n: usize) -> Vec<(String, String)> {
    let id = if n == 0 {
        "c0925911-ce8f-4994-b117-542b5f28d036".to_owned()
    } else {
        format!("c0925911-ce8f-4994-b117-542b5f28d{n:03}")
    };
    [
        ("id", id.as_str()),
        ("chat_id", "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a"),
        ("talk_id", "109"),
        ("contact_id", "1298200"),
        ("text", "Oi"),
        ("created_at", "1736447224"),
        ("element_type", "2"),
        ("entity_type", "lead"),
        ("element_id", "878244"),
        ("entity_id", "878244"),
        ("type", "incoming"),
        ("author][id", "d408292e-3376-4108-82e3-45cb200f62c3"),
        ("author][type", "external"),
        ("author][name", "Douglas Augusto"),
        ("origin", "com.amocrm.amocrmwa"),
    ]
    .into_iter()
    .map(|(k, v)| (format!("message[add][{n}][{k}]"), v.to_owned()))
    .collect()
}

fn form_body(items: usize) -> Vec<u8> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("account[subdomain]", "adrianocamposadvogado")
        .append_pair("account[id]", "33981183")
        .append_pair(
            "account[_links][self]",
            "https://adrianocamposadvogado.amocrm.com",
        );
    for n in 0..items {
        for (k, v) in capture_item(n) {
            form.append_pair(&k, &v);
        }
    }
    form.finish().into_bytes()
}

const JSON_BODY: &str = r#"{
  "account": { "subdomain": "adrianocamposadvogado", "id": "33981183",
    "_links": { "self": "https://adrianocamposadvogado.amocrm.com" } },
  "message": { "add": [ {
      "id": "c0925911-ce8f-4994-b117-542b5f28d036",
      "chat_id": "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
      "talk_id": "109", "contact_id": "1298200", "text": "Oi",
      "created_at": "1736447224", "element_type": "2", "entity_type": "lead",
      "element_id": "878244", "entity_id": "878244", "type": "incoming",
      "author": { "id": "d408292e-3376-4108-82e3-45cb200f62c3", "type": "external", "name": "Douglas Augusto" },
      "origin": "com.amocrm.amocrmwa" } ] }
}"#;

fn parser(c: &mut Criterion) {
    let single = form_body(1);
    let ten = form_body(10);
    // The bodies must parse, or the bench would time the error path.
    assert_eq!(parse_form(&single).expect("single body").events.len(), 1);
    assert_eq!(parse_form(&ten).expect("ten-item body").events.len(), 10);
    assert_eq!(
        parse_json(JSON_BODY.as_bytes())
            .expect("json body")
            .events
            .len(),
        1
    );

    let mut group = c.benchmark_group("webhook_parser");
    group.throughput(Throughput::Bytes(single.len() as u64));
    group.bench_function("form/single_message", |b| {
        b.iter(|| parse_form(black_box(&single)))
    });
    group.throughput(Throughput::Bytes(ten.len() as u64));
    group.bench_function("form/ten_messages", |b| {
        b.iter(|| parse_form(black_box(&ten)))
    });
    group.throughput(Throughput::Bytes(JSON_BODY.len() as u64));
    group.bench_function("json/single_message", |b| {
        b.iter(|| parse_json(black_box(JSON_BODY.as_bytes())))
    });
    group.finish();
}

criterion_group!(benches, parser);
criterion_main!(benches);
