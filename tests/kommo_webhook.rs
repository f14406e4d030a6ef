//! Tests of the Kommo webhook parser (`conversa::kommo::webhook`): the real capture (B) of
//! docs/kommo.md (*Capture B*) as Kommo's form encoding and as JSON, multi-item and mixed bodies, outgoing
//! variants, spaces and UTF-8, malformed bodies and the abuse limits, and a property test that the
//! form and JSON encodings of random messages parse to the same `Webhook`.

mod support;

use conversa::kommo::webhook::*;
use proptest::prelude::*;
use serde_json::json;
use support::fake_kommo::form;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// Capture (B), text message, re-encoded by hand the way Kommo sends it (brackets as `%5B`/`%5D`,
/// spaces as `+`).
const CAPTURE_B_TEXT_FORM: &str = concat!(
    "account%5Bsubdomain%5D=adrianocamposadvogado",
    "&account%5Bid%5D=33981183",
    "&account%5B_links%5D%5Bself%5D=https%3A%2F%2Fadrianocamposadvogado.amocrm.com",
    "&message%5Badd%5D%5B0%5D%5Bid%5D=c0925911-ce8f-4994-b117-542b5f28d036",
    "&message%5Badd%5D%5B0%5D%5Bchat_id%5D=7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
    "&message%5Badd%5D%5B0%5D%5Btalk_id%5D=109",
    "&message%5Badd%5D%5B0%5D%5Bcontact_id%5D=1298200",
    "&message%5Badd%5D%5B0%5D%5Btext%5D=Oi",
    "&message%5Badd%5D%5B0%5D%5Bcreated_at%5D=1736447224",
    "&message%5Badd%5D%5B0%5D%5Belement_type%5D=2",
    "&message%5Badd%5D%5B0%5D%5Bentity_type%5D=lead",
    "&message%5Badd%5D%5B0%5D%5Belement_id%5D=878244",
    "&message%5Badd%5D%5B0%5D%5Bentity_id%5D=878244",
    "&message%5Badd%5D%5B0%5D%5Btype%5D=incoming",
    "&message%5Badd%5D%5B0%5D%5Bauthor%5D%5Bid%5D=d408292e-3376-4108-82e3-45cb200f62c3",
    "&message%5Badd%5D%5B0%5D%5Bauthor%5D%5Btype%5D=external",
    "&message%5Badd%5D%5B0%5D%5Bauthor%5D%5Bname%5D=Douglas+Augusto",
    "&message%5Badd%5D%5B0%5D%5Borigin%5D=com.amocrm.amocrmwa",
);

/// The voice-note variant (the capture elides the rest of its id; completed here).
const VOICE_ID: &str = "55dd912f-0b1e-4c3a-9d2f-7a6b5c4d3e2f";
const VOICE_LINK: &str = "https://drive-c.kommo.com/download/b9d0ffdd-8556-5b96-8bd1-561f35c1c845/36a184b0-7976-419e-a6fe-ce7b975d4baa/171f8fac-bd9b-4ec2-a2d7-3d9b992acb6d/data.m4a";

const CAPTURE_B_VOICE_FORM: &str = concat!(
    "account%5Bsubdomain%5D=adrianocamposadvogado",
    "&account%5Bid%5D=33981183",
    "&account%5B_links%5D%5Bself%5D=https%3A%2F%2Fadrianocamposadvogado.amocrm.com",
    "&message%5Badd%5D%5B0%5D%5Bid%5D=55dd912f-0b1e-4c3a-9d2f-7a6b5c4d3e2f",
    "&message%5Badd%5D%5B0%5D%5Bchat_id%5D=7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
    "&message%5Badd%5D%5B0%5D%5Btalk_id%5D=109",
    "&message%5Badd%5D%5B0%5D%5Bcontact_id%5D=1298200",
    "&message%5Badd%5D%5B0%5D%5Btext%5D=",
    "&message%5Badd%5D%5B0%5D%5Bcreated_at%5D=1736447462",
    "&message%5Badd%5D%5B0%5D%5Belement_type%5D=2",
    "&message%5Badd%5D%5B0%5D%5Bentity_type%5D=lead",
    "&message%5Badd%5D%5B0%5D%5Belement_id%5D=878244",
    "&message%5Badd%5D%5B0%5D%5Bentity_id%5D=878244",
    "&message%5Badd%5D%5B0%5D%5Btype%5D=incoming",
    "&message%5Badd%5D%5B0%5D%5Bauthor%5D%5Bid%5D=d408292e-3376-4108-82e3-45cb200f62c3",
    "&message%5Badd%5D%5B0%5D%5Bauthor%5D%5Btype%5D=external",
    "&message%5Badd%5D%5B0%5D%5Bauthor%5D%5Bname%5D=Douglas+Augusto",
    "&message%5Badd%5D%5B0%5D%5Battachment%5D%5Btype%5D=voice",
    "&message%5Badd%5D%5B0%5D%5Battachment%5D%5Blink%5D=https%3A%2F%2Fdrive-c.kommo.com%2Fdownload",
    "%2Fb9d0ffdd-8556-5b96-8bd1-561f35c1c845%2F36a184b0-7976-419e-a6fe-ce7b975d4baa",
    "%2F171f8fac-bd9b-4ec2-a2d7-3d9b992acb6d%2Fdata.m4a",
    "&message%5Badd%5D%5B0%5D%5Battachment%5D%5Bfile_name%5D=data.m4a",
    "&message%5Badd%5D%5B0%5D%5Borigin%5D=com.amocrm.amocrmwa",
);

/// Capture (B) as JSON, verbatim from docs/kommo.md, *Capture B* (both messages as array items).
const CAPTURE_B_JSON: &str = r#"{
  "account": { "subdomain": "adrianocamposadvogado", "id": "33981183",
    "_links": { "self": "https://adrianocamposadvogado.amocrm.com" } },
  "message": { "add": [ {
      "id": "c0925911-ce8f-4994-b117-542b5f28d036",
      "chat_id": "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
      "talk_id": "109", "contact_id": "1298200", "text": "Oi",
      "created_at": "1736447224", "element_type": "2", "entity_type": "lead",
      "element_id": "878244", "entity_id": "878244", "type": "incoming",
      "author": { "id": "d408292e-3376-4108-82e3-45cb200f62c3", "type": "external", "name": "Douglas Augusto" },
      "origin": "com.amocrm.amocrmwa" },
    {
      "id": "55dd912f-0b1e-4c3a-9d2f-7a6b5c4d3e2f",
      "chat_id": "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
      "talk_id": "109", "contact_id": "1298200", "text": "",
      "created_at": "1736447462", "element_type": "2", "entity_type": "lead",
      "element_id": "878244", "entity_id": "878244", "type": "incoming",
      "author": { "id": "d408292e-3376-4108-82e3-45cb200f62c3", "type": "external", "name": "Douglas Augusto" },
      "attachment": {"type": "voice", "link": "https://drive-c.kommo.com/download/b9d0ffdd-8556-5b96-8bd1-561f35c1c845/36a184b0-7976-419e-a6fe-ce7b975d4baa/171f8fac-bd9b-4ec2-a2d7-3d9b992acb6d/data.m4a", "file_name": "data.m4a"},
      "origin": "com.amocrm.amocrmwa" } ] }
}"#;

fn capture_account() -> Option<AccountRef> {
    Some(AccountRef {
        id: Some(33981183),
        subdomain: Some("adrianocamposadvogado".to_owned()),
    })
}

fn capture_text_message() -> MessageItem {
    MessageItem {
        id: "c0925911-ce8f-4994-b117-542b5f28d036".to_owned(),
        chat_id: Some("7df3cc9c-26c0-4b30-b8c9-b9ac728b407a".to_owned()),
        talk_id: Some(109),
        contact_id: 1298200,
        lead_id: Some(878244),
        text: "Oi".to_owned(),
        created_at: 1736447224,
        direction: Direction::Incoming,
        author: Some(Author {
            id: Some("d408292e-3376-4108-82e3-45cb200f62c3".to_owned()),
            kind: Some("external".to_owned()),
            name: Some("Douglas Augusto".to_owned()),
        }),
        attachment: None,
        origin: Some("com.amocrm.amocrmwa".to_owned()),
    }
}

fn capture_voice_message() -> MessageItem {
    MessageItem {
        id: VOICE_ID.to_owned(),
        text: String::new(),
        created_at: 1736447462,
        attachment: Some(AttachmentItem {
            kind: "voice".to_owned(),
            link: VOICE_LINK.to_owned(),
            file_name: Some("data.m4a".to_owned()),
        }),
        ..capture_text_message()
    }
}

fn messages(w: &Webhook) -> Vec<&MessageItem> {
    w.events
        .iter()
        .filter_map(|e| match e {
            WebhookEvent::Message(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn minimal_message(prefix: &str, id: &str, contact: &str) -> Vec<(String, String)> {
    vec![
        (format!("{prefix}[id]"), id.to_owned()),
        (format!("{prefix}[contact_id]"), contact.to_owned()),
        (format!("{prefix}[text]"), format!("text of {id}")),
        (format!("{prefix}[created_at]"), "1700000000".to_owned()),
    ]
}

fn form_owned(pairs: &[(String, String)]) -> String {
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form(&refs)
}

/// The error of a refused body, or else of its first rejected item.
fn first_error(parsed: Result<Webhook, ParseError>) -> ParseError {
    match parsed {
        Err(e) => e,
        Ok(w) => w
            .rejected
            .into_iter()
            .next()
            .expect("expected a parse error or a rejected item"),
    }
}

/// The error of a refused body, or else of its first rejected item (a bad item no longer
/// refuses the whole body: the others apply).
fn err_form(body: &str) -> ParseError {
    first_error(parse_form(body.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// The real capture
// ---------------------------------------------------------------------------------------------

#[test]
fn capture_b_text_as_form() {
    let w = parse_form(CAPTURE_B_TEXT_FORM.as_bytes()).unwrap();
    assert_eq!(
        w,
        Webhook {
            account: capture_account(),
            events: vec![WebhookEvent::Message(capture_text_message())],
            unknown: vec![],
            rejected: vec![],
            shaped: true,
        }
    );
}

#[test]
fn capture_b_voice_as_form() {
    let w = parse_form(CAPTURE_B_VOICE_FORM.as_bytes()).unwrap();
    assert_eq!(w.account, capture_account());
    assert_eq!(
        w.events,
        vec![WebhookEvent::Message(capture_voice_message())]
    );
    assert!(w.unknown.is_empty());
}

#[test]
fn capture_b_as_json() {
    let w = parse_json(CAPTURE_B_JSON.as_bytes()).unwrap();
    assert_eq!(
        w,
        Webhook {
            account: capture_account(),
            events: vec![
                WebhookEvent::Message(capture_text_message()),
                WebhookEvent::Message(capture_voice_message()),
            ],
            unknown: vec![],
            rejected: vec![],
            shaped: true,
        }
    );
}

#[test]
fn capture_b_json_with_object_items_and_numbers() {
    let body = json!({
        "account": {"subdomain": "adrianocamposadvogado", "id": 33981183},
        "message": {"add": {"0": {
            "id": "c0925911-ce8f-4994-b117-542b5f28d036",
            "chat_id": "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
            "talk_id": 109, "contact_id": 1298200, "text": "Oi",
            "created_at": 1736447224, "element_type": 2, "entity_type": "lead",
            "element_id": 878244, "entity_id": 878244, "type": "incoming",
            "author": {"id": "d408292e-3376-4108-82e3-45cb200f62c3", "type": "external", "name": "Douglas Augusto"},
            "origin": "com.amocrm.amocrmwa"
        }}}
    });
    let w = parse_json(body.to_string().as_bytes()).unwrap();
    assert_eq!(w, parse_form(CAPTURE_B_TEXT_FORM.as_bytes()).unwrap());
}

#[test]
fn capture_b_form_and_json_agree() {
    let both_form = format!(
        "{CAPTURE_B_TEXT_FORM}&{}",
        CAPTURE_B_VOICE_FORM
            .split('&')
            .filter(|p| p.starts_with("message"))
            .map(|p| p.replacen("%5B0%5D", "%5B1%5D", 1))
            .collect::<Vec<_>>()
            .join("&")
    );
    assert_eq!(
        parse_form(both_form.as_bytes()).unwrap(),
        parse_json(CAPTURE_B_JSON.as_bytes()).unwrap()
    );
}

#[test]
fn unencoded_brackets() {
    let body = CAPTURE_B_TEXT_FORM.replace("%5B", "[").replace("%5D", "]");
    assert!(body.contains("message[add][0][author][name]=Douglas+Augusto"));
    assert_eq!(
        parse_form(body.as_bytes()).unwrap(),
        parse_form(CAPTURE_B_TEXT_FORM.as_bytes()).unwrap()
    );
    // Lower-case escapes and a mix of both styles.
    let mixed = CAPTURE_B_TEXT_FORM
        .replacen("%5B", "%5b", 3)
        .replacen("%5D", "]", 5);
    assert_eq!(
        parse_form(mixed.as_bytes()).unwrap(),
        parse_form(CAPTURE_B_TEXT_FORM.as_bytes()).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Several items, several entities
// ---------------------------------------------------------------------------------------------

#[test]
fn multi_item_bodies_keep_index_order() {
    let mut pairs = Vec::new();
    // Out of order in the body, and `[10]` sorts after `[2]` numerically.
    for (i, id) in [(2, "c"), (0, "a"), (10, "d"), (1, "b")] {
        pairs.extend(minimal_message(
            &format!("message[add][{i}]"),
            id,
            &format!("{}", 100 + i),
        ));
    }
    let w = parse_form(form_owned(&pairs).as_bytes()).unwrap();
    let got: Vec<(&str, u64)> = messages(&w)
        .iter()
        .map(|m| (m.id.as_str(), m.contact_id))
        .collect();
    assert_eq!(got, vec![("a", 100), ("b", 101), ("c", 102), ("d", 110)]);
    assert!(w.account.is_none());
}

#[test]
fn mixed_body() {
    let mut pairs: Vec<(String, String)> = [
        ("account[id]", "33981183"),
        ("account[subdomain]", "acme"),
        ("account[_links][self]", "https://acme.kommo.com"),
        // talk
        ("talk[update][0][talk_id]", "109"),
        ("talk[update][0][contact_id]", "1298200"),
        (
            "talk[update][0][chat_id]",
            "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a",
        ),
        ("talk[update][0][entity_id]", "878244"),
        ("talk[update][0][entity_type]", "lead"),
        ("talk[update][0][is_in_work]", "1"),
        ("talk[update][0][is_read]", "0"),
        ("talk[update][0][rate]", "0"),
        ("talk[update][0][origin]", "com.amocrm.amocrmwa"),
        // lead status change
        ("leads[status][0][id]", "878244"),
        ("leads[status][0][status_id]", "142"),
        ("leads[status][0][old_status_id]", "5000"),
        ("leads[status][0][pipeline_id]", "7000"),
        ("leads[status][0][old_pipeline_id]", "7000"),
        ("leads[status][0][responsible_user_id]", "504141"),
        ("leads[status][0][custom_fields][0][id]", "10"),
        ("leads[status][0][custom_fields][0][values][0][value]", "x"),
        // lead responsible change with linked contacts
        ("leads[responsible][0][id]", "878245"),
        ("leads[responsible][0][responsible_user_id]", "11"),
        ("leads[responsible][0][old_responsible_user_id]", "504141"),
        ("leads[responsible][0][contacts][0][id]", "1298200"),
        ("leads[responsible][0][contacts][1][id]", "1298201"),
        // unsorted
        ("unsorted[add][0][uid]", "a1b2c3"),
        ("unsorted[add][0][source]", "com.amocrm.amocrmwa"),
        ("unsorted[add][0][data][leads][0][id]", "878246"),
        ("unsorted[add][0][data][contacts][0][id]", "1298202"),
        (
            "unsorted[add][0][data][contacts][0][custom_fields][0][values][0][value]",
            "+55 11 99999-0000",
        ),
        // unknown entity and unknown action
        ("task[add][0][id]", "1"),
        ("task[add][0][text]", "call back"),
        ("leads[note][0][note][id]", "77"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    pairs.extend(minimal_message("message[add][0]", "m-1", "1298200"));
    let w = parse_form(form_owned(&pairs).as_bytes()).unwrap();

    assert_eq!(
        w.account,
        Some(AccountRef {
            id: Some(33981183),
            subdomain: Some("acme".to_owned())
        })
    );
    assert_eq!(w.unknown, vec!["leads[note]", "task[add]"]);
    assert_eq!(
        w.events,
        vec![
            WebhookEvent::Lead {
                action: "responsible".to_owned(),
                lead_id: 878245,
                responsible_user_id: Some(11),
                old_responsible_user_id: Some(504141),
                status_id: None,
                pipeline_id: None,
                contact_ids: vec![1298200, 1298201],
            },
            WebhookEvent::Lead {
                action: "status".to_owned(),
                lead_id: 878244,
                responsible_user_id: Some(504141),
                old_responsible_user_id: None,
                status_id: Some(142),
                pipeline_id: Some(7000),
                contact_ids: vec![],
            },
            WebhookEvent::Message(MessageItem {
                id: "m-1".to_owned(),
                chat_id: None,
                talk_id: None,
                contact_id: 1298200,
                lead_id: None,
                text: "text of m-1".to_owned(),
                created_at: 1700000000,
                direction: Direction::Incoming,
                author: None,
                attachment: None,
                origin: None,
            }),
            WebhookEvent::Talk {
                action: "update".to_owned(),
                talk_id: Some(109),
                contact_id: Some(1298200),
                chat_id: Some("7df3cc9c-26c0-4b30-b8c9-b9ac728b407a".to_owned()),
                lead_id: Some(878244),
                is_in_work: Some(true),
                origin: Some("com.amocrm.amocrmwa".to_owned()),
            },
            WebhookEvent::Unsorted {
                action: "add".to_owned(),
                lead_id: Some(878246),
                contact_id: Some(1298202),
                raw_uid: Some("a1b2c3".to_owned()),
            },
        ]
    );

    // The same tree as JSON gives the same result.
    let json = json!({
        "account": {"id": "33981183", "subdomain": "acme", "_links": {"self": "https://acme.kommo.com"}},
        "talk": {"update": [{"talk_id": 109, "contact_id": 1298200,
            "chat_id": "7df3cc9c-26c0-4b30-b8c9-b9ac728b407a", "entity_id": 878244,
            "entity_type": "lead", "is_in_work": true, "is_read": false, "rate": 0,
            "origin": "com.amocrm.amocrmwa"}]},
        "leads": {
            "status": [{"id": 878244, "status_id": 142, "old_status_id": 5000, "pipeline_id": 7000,
                "old_pipeline_id": 7000, "responsible_user_id": 504141,
                "custom_fields": [{"id": 10, "values": [{"value": "x"}]}]}],
            "responsible": {"0": {"id": "878245", "responsible_user_id": "11",
                "old_responsible_user_id": "504141", "contacts": [{"id": 1298200}, {"id": 1298201}]}},
            "note": [{"note": {"id": 77}}]
        },
        "unsorted": {"add": [{"uid": "a1b2c3", "source": "com.amocrm.amocrmwa",
            "data": {"leads": [{"id": 878246}], "contacts": [{"id": 1298202,
                "custom_fields": [{"values": [{"value": "+55 11 99999-0000"}]}]}]}}]},
        "task": {"add": [{"id": 1, "text": "call back"}]},
        "message": {"add": [{"id": "m-1", "contact_id": 1298200, "text": "text of m-1",
            "created_at": 1700000000}]}
    });
    assert_eq!(parse_json(json.to_string().as_bytes()).unwrap(), w);
}

#[test]
fn lead_variants() {
    let body = form(&[
        ("leads[add][0][id]", "1"),
        ("leads[add][0][status_id]", ""),
        ("leads[add][0][_embedded][contacts][0][id]", "50"),
        ("leads[add][0][main_contact_id]", "51"),
        ("leads[update][0][id]", "2"),
        ("leads[update][0][contacts][id][0]", "60"),
        ("leads[update][0][contacts][id][1]", "61"),
        ("leads[update][0][contacts][id][2]", "not-a-number"),
        ("leads[delete][0][id]", "3"),
        ("leads[restore][0][id]", "4"),
    ]);
    let w = parse_form(body.as_bytes()).unwrap();
    let got: Vec<(&str, u64, Vec<u64>)> = w
        .events
        .iter()
        .map(|e| match e {
            WebhookEvent::Lead {
                action,
                lead_id,
                contact_ids,
                status_id,
                ..
            } => {
                assert_eq!(*status_id, None);
                (action.as_str(), *lead_id, contact_ids.clone())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("add", 1, vec![50, 51]),
            ("delete", 3, vec![]),
            ("restore", 4, vec![]),
            ("update", 2, vec![60, 61]),
        ]
    );

    // `{entity:{action:id}}` (deletes per the docs): the value is the id.
    let w = parse_form(b"leads[delete]=77").unwrap();
    assert!(matches!(
        w.events.as_slice(),
        [WebhookEvent::Lead { lead_id: 77, .. }]
    ));

    let e = err_form("leads[status][0][id]=1&leads[status][0][status_id]=won");
    assert_eq!(e.key, "leads[status][0][status_id]");
    let e = err_form("leads[update][0][name]=x");
    assert_eq!(e.key, "leads[update][0][id]");
}

#[test]
fn unsorted_variants() {
    let body = form(&[
        ("unsorted[add][0][uid]", "u0"),
        ("unsorted[add][0][lead_id]", "10"),
        ("unsorted[add][0][contact_id]", "20"),
        ("unsorted[delete][0][uid]", "u1"),
        ("unsorted[delete][0][action]", "accept"),
        ("unsorted[delete][0][accept_result][leads][0]", "11"),
        ("unsorted[delete][0][accept_result][contacts][0]", "21"),
        ("unsorted[delete][1][uid]", "u2"),
        ("unsorted[delete][1][action]", "decline"),
        ("unsorted[delete][1][lead_id]", "garbage"),
        ("unsorted[update][0][uid]", "u3"),
        ("unsorted[update][0][leads][0][id]", "12"),
    ]);
    let w = parse_form(body.as_bytes()).unwrap();
    let got: Vec<_> = w
        .events
        .iter()
        .map(|e| match e {
            WebhookEvent::Unsorted {
                action,
                lead_id,
                contact_id,
                raw_uid,
            } => (action.as_str(), *lead_id, *contact_id, raw_uid.as_deref()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("add", Some(10), Some(20), Some("u0")),
            ("delete", Some(11), Some(21), Some("u1")),
            ("delete", None, None, Some("u2")),
            ("update", Some(12), None, Some("u3")),
        ]
    );
}

#[test]
fn talk_is_lenient() {
    let w = parse_form(
        form(&[
            ("talk[add][0][id]", "5"),
            ("talk[add][0][contact_id]", "abc"),
            ("talk[add][0][is_in_work]", "maybe"),
            ("talk[add][0][entity_type]", "contact"),
            ("talk[add][0][entity_id]", "99"),
        ])
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        w.events,
        vec![WebhookEvent::Talk {
            action: "add".to_owned(),
            talk_id: Some(5),
            contact_id: None,
            chat_id: None,
            lead_id: None,
            is_in_work: None,
            origin: None,
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Outgoing messages (shape unconfirmed)
// ---------------------------------------------------------------------------------------------

#[test]
fn outgoing_message_variants() {
    let mut pairs = minimal_message("message[add][0]", "in-1", "7");
    pairs.extend(minimal_message("message[add][1]", "out-1", "7"));
    pairs.push(("message[add][1][type]".into(), "outgoing".into()));
    pairs.push(("message[add][1][author][type]".into(), "user".into()));
    pairs.extend(minimal_message("message[add][2]", "out-2", "7"));
    pairs.push(("message[add][2][type]".into(), "OUTGOING".into()));
    // The peers' guess: a separate prefix, `author[user_id]`, `recipient[…]`, `message_type`.
    pairs.extend(minimal_message("outgoing_message[add][0]", "out-3", "7"));
    pairs.extend(
        [
            ("outgoing_message[add][0][type]", "outgoing"),
            ("outgoing_message[add][0][message_type]", "text"),
            ("outgoing_message[add][0][source_id]", "19666978"),
            ("outgoing_message[add][0][author][type]", "internal"),
            ("outgoing_message[add][0][author][user_id]", "504141"),
            ("outgoing_message[add][0][author][name]", "Vendedor"),
            ("outgoing_message[add][0][recipient][id]", "client-7"),
            ("outgoing_message[add][0][entity_type]", "leads"),
            ("outgoing_message[add][0][entity_id]", "878244"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    // Even without a `type`, the prefix says outgoing.
    pairs.extend(minimal_message("outgoing_message[add][1]", "out-4", "7"));
    pairs.push(("outgoing_message[add][1][type]".into(), "incoming".into()));
    let w = parse_form(form_owned(&pairs).as_bytes()).unwrap();
    let got: Vec<(&str, Direction)> = messages(&w)
        .iter()
        .map(|m| (m.id.as_str(), m.direction))
        .collect();
    assert_eq!(
        got,
        vec![
            ("in-1", Direction::Incoming),
            ("out-1", Direction::Outgoing),
            ("out-2", Direction::Outgoing),
            ("out-3", Direction::Outgoing),
            ("out-4", Direction::Outgoing),
        ]
    );
    let out3 = messages(&w)[3].clone();
    assert_eq!(
        out3.author,
        Some(Author {
            id: Some("504141".to_owned()),
            kind: Some("internal".to_owned()),
            name: Some("Vendedor".to_owned()),
        })
    );
    assert_eq!(out3.lead_id, Some(878244));
    assert!(w.unknown.is_empty());

    // Other actions of the guessed prefix are unknown, not errors.
    let w = parse_form(b"outgoing_message[update][0][id]=x").unwrap();
    assert_eq!(w.unknown, vec!["outgoing_message[update]"]);
}

// ---------------------------------------------------------------------------------------------
// Encoding details
// ---------------------------------------------------------------------------------------------

#[test]
fn spaces_and_utf8() {
    let text = "Olá, tudo bem? Não consegui ver a cotação 😀 — ação & reação = 100% [ok]";
    let mut pairs = minimal_message("message[add][0]", "m", "1");
    pairs[2].1 = text.to_owned();
    pairs.push((
        "message[add][0][author][name]".into(),
        "João Conceição".into(),
    ));
    let body = form_owned(&pairs);
    assert!(body.contains("Ol%C3%A1%2C+tudo+bem"));
    let w = parse_form(body.as_bytes()).unwrap();
    let m = messages(&w)[0];
    assert_eq!(m.text, text);
    assert_eq!(
        m.author.as_ref().unwrap().name.as_deref(),
        Some("João Conceição")
    );

    // `%20` and `+` are both spaces; a literal `+` is `%2B`.
    let w = parse_form(
        b"message[add][0][id]=m&message[add][0][contact_id]=1&message[add][0][text]=a%20b+c%2Bd",
    )
    .unwrap();
    assert_eq!(messages(&w)[0].text, "a b c+d");

    // Raw (unencoded) UTF-8 bytes are accepted too.
    let w = parse_form(
        "message[add][0][id]=m&message[add][0][contact_id]=1&message[add][0][text]=ação 😀"
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(messages(&w)[0].text, "ação 😀");
}

#[test]
fn invalid_percent_encoding_is_tolerated() {
    // form_urlencoded keeps an invalid escape literally and replaces invalid UTF-8 with U+FFFD.
    let w = parse_form(
        b"message[add][0][id]=m&message[add][0][contact_id]=1&message[add][0][text]=100%zz%&x=%FF",
    )
    .unwrap();
    assert_eq!(messages(&w)[0].text, "100%zz%");
    assert_eq!(w.unknown, vec!["x"]);
    let w = parse_form(b"message[add][0][id]=%FF%FE&message[add][0][contact_id]=1").unwrap();
    assert_eq!(messages(&w)[0].id, "\u{FFFD}\u{FFFD}");
}

#[test]
fn empty_and_account_only_bodies() {
    for body in [&b""[..], b"&&", b"=", b"=x&[a]=1"] {
        assert_eq!(parse_form(body).unwrap(), Webhook::default(), "{body:?}");
    }
    assert_eq!(parse_json(b"").unwrap(), Webhook::default());
    assert_eq!(parse_json(b" \n").unwrap(), Webhook::default());
    assert_eq!(parse_json(b"{}").unwrap(), Webhook::default());
    let w = parse_form(b"account[id]=1&account[subdomain]=acme&account[_links][self]=x").unwrap();
    assert_eq!(
        w,
        Webhook {
            account: Some(AccountRef {
                id: Some(1),
                subdomain: Some("acme".to_owned())
            }),
            events: vec![],
            unknown: vec![],
            rejected: vec![],
            shaped: true,
        }
    );
    let w = parse_json(br#"{"account":{"id":1,"subdomain":"acme"}}"#).unwrap();
    assert_eq!(w.account.unwrap().id, Some(1));
}

#[test]
fn parse_by_shape() {
    let json_body = CAPTURE_B_JSON.as_bytes();
    let form_body = CAPTURE_B_TEXT_FORM.as_bytes();
    let from_json = parse_json(json_body).unwrap();
    let from_form = parse_form(form_body).unwrap();
    assert!(!from_json.events.is_empty());
    assert_eq!(parse(json_body).unwrap(), from_json);
    assert_eq!(parse(form_body).unwrap(), from_form);
    let padded = [b"  \n".as_slice(), json_body].concat();
    assert_eq!(parse(&padded).unwrap(), from_json);
    assert_eq!(parse(b"").unwrap(), Webhook::default());
}

// ---------------------------------------------------------------------------------------------
// Malformed bodies and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_required_fields_name_the_key() {
    let e = err_form("message[add][0][contact_id]=1&message[add][0][text]=hi");
    assert_eq!(e.key, "message[add][0][id]");
    assert_eq!(e.to_string(), "message[add][0][id]: missing");

    let e = err_form(
        "message%5Badd%5D%5B0%5D%5Bid%5D=a&message%5Badd%5D%5B1%5D%5Bid%5D=b&message%5Badd%5D%5B0%5D%5Bcontact_id%5D=1",
    );
    assert_eq!(e.key, "message[add][1][contact_id]");

    let e = err_form("outgoing_message[add][0][id]=a");
    assert_eq!(e.key, "outgoing_message[add][0][contact_id]");

    let e = first_error(parse_json(br#"{"message":{"add":[{"contact_id":"1"}]}}"#));
    assert_eq!(e.key, "message[add][0][id]");
}

#[test]
fn non_numeric_fields_name_the_key() {
    let e = err_form("message[add][0][id]=a&message[add][0][contact_id]=12x");
    assert_eq!(e.key, "message[add][0][contact_id]");
    assert!(e.message.contains("12x"), "{e}");
    let e = err_form("message[add][0][id]=a&message[add][0][contact_id]=-1");
    assert_eq!(e.key, "message[add][0][contact_id]");
    let e =
        err_form("message[add][0][id]=a&message[add][0][contact_id]=1&message[add][0][talk_id]=x");
    assert_eq!(e.key, "message[add][0][talk_id]");
    let e = err_form(
        "message[add][0][id]=a&message[add][0][contact_id]=1&message[add][0][created_at]=yesterday",
    );
    assert_eq!(e.key, "message[add][0][created_at]");
    let e = err_form(
        "message[add][0][id]=a&message[add][0][contact_id]=1&message[add][0][entity_type]=lead&message[add][0][entity_id]=x",
    );
    assert_eq!(e.key, "message[add][0][entity_id]");
    let e = err_form("account[id]=acme");
    assert_eq!(e.key, "account[id]");
    let e = first_error(parse_json(
        br#"{"message":{"add":{"0":{"id":"a","contact_id":1.5}}}}"#,
    ));
    assert_eq!(e.key, "message[add][0][contact_id]");
    let e = first_error(parse_json(
        br#"{"message":{"add":[{"id":"a","contact_id":{"x":1}}]}}"#,
    ));
    assert_eq!(e.key, "message[add][0][contact_id]");
}

#[test]
fn bad_item_shapes_name_the_key() {
    let e = err_form("message[add]=hello");
    assert_eq!(e.key, "message[add]");
    let e = err_form("message[add][0]=hello");
    assert_eq!(e.key, "message[add][0]");
    let e = err_form("message[add][first][id]=a&message[add][first][contact_id]=1");
    assert_eq!(e.key, "message[add][first]");
    let e = err_form("message[add][][id]=a");
    assert_eq!(e.key, "message[add][]");
    let e = first_error(parse_json(br#"{"message":{"add":"x"}}"#));
    assert_eq!(e.key, "message[add]");
    // Unknown things are never errors.
    let w = parse_form(b"message=1&message[update][0]=x&foo[bar][baz]=1&task=").unwrap();
    assert_eq!(w.unknown, vec!["foo[bar]", "message[update]", "task"]);
}

#[test]
fn item_index_too_large() {
    let e = err_form("message[add][1000][id]=a&message[add][1000][contact_id]=1");
    assert_eq!(e.key, "message[add][1000]");
    let e = err_form("leads[status][99999999999999999999999][id]=1");
    assert_eq!(e.key, "leads[status][99999999999999999999999]");
    // 999 is the largest accepted index.
    let w = parse_form(b"message[add][999][id]=a&message[add][999][contact_id]=1").unwrap();
    assert_eq!(messages(&w).len(), 1);
    // JSON arrays: the 1001st item has index 1000.
    let items: Vec<_> = (0..1001)
        .map(|i| json!({"id": format!("m{i}"), "contact_id": 1}))
        .collect();
    let body = json!({"message": {"add": items}}).to_string();
    let e = first_error(parse_json(body.as_bytes()));
    assert_eq!(e.key, "message[add][1000]");
}

#[test]
fn depth_too_deep() {
    let ok = format!("unsorted[add][0]{}=1", "[x]".repeat(MAX_DEPTH - 3));
    assert!(parse_form(ok.as_bytes()).is_ok());
    let deep_key = format!("message[add][0][author]{}", "[x]".repeat(MAX_DEPTH - 3));
    let e = err_form(&format!(
        "{}=1",
        deep_key.replace('[', "%5B").replace(']', "%5D")
    ));
    assert_eq!(e.key, deep_key);
    assert!(e.message.contains("deep"), "{e}");

    // JSON: the same nesting.
    let mut v = json!(1);
    for _ in 0..(MAX_DEPTH - 3) {
        v = json!({ "x": v });
    }
    let body = json!({"message": {"add": [{"author": v}]}}).to_string();
    let e = parse_json(body.as_bytes()).unwrap_err();
    assert_eq!(e.key, deep_key);
    // Hostile JSON nesting is stopped by serde_json's recursion limit, not by a stack overflow.
    let hostile = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert_eq!(parse_json(hostile.as_bytes()).unwrap_err().key, "body");
    let hostile = "[".repeat(100_000);
    assert!(parse_json(hostile.as_bytes()).is_err());
}

#[test]
fn too_many_pairs() {
    let body: Vec<String> = (0..=MAX_PAIRS).map(|i| format!("x{i}=1")).collect();
    let e = err_form(&body.join("&"));
    assert_eq!(e.key, format!("x{MAX_PAIRS}"));
    assert!(e.message.contains("too many"), "{e}");
    // A blank key past the limit names nothing: the body is named instead.
    let blank = format!("{}&=1", body[..MAX_PAIRS].join("&"));
    assert_eq!(err_form(&blank).key, "body");
    // Exactly MAX_PAIRS pairs are fine.
    let body = body[..MAX_PAIRS].join("&");
    assert_eq!(
        parse_form(body.as_bytes()).unwrap().unknown.len(),
        MAX_PAIRS
    );

    let values: Vec<u32> = (0..=MAX_PAIRS as u32).collect();
    let e = parse_json(json!({ "x": values }).to_string().as_bytes()).unwrap_err();
    assert!(e.message.contains("too many"), "{e}");
    assert!(e.key.starts_with("x["), "{e}");
}

#[test]
fn json_body_errors() {
    for body in [&b"{"[..], b"[]", b"\"x\"", b"42", b"{\"a\":1}x", b"\xff"] {
        let e = parse_json(body).unwrap_err();
        assert_eq!(e.key, "body", "{body:?}");
    }
}

#[test]
fn huge_keys_are_truncated_in_errors_and_unknown() {
    let name = "a".repeat(100_000);
    let w = parse_form(format!("{name}[b]=1").as_bytes()).unwrap();
    assert!(w.unknown[0].len() < 300);
    let e = err_form(&format!("message[add][{name}][id]=1"));
    assert!(e.key.len() < 300);
    assert!(e.key.starts_with("message[add][aaa"));
}

#[test]
fn serializes_for_logging() {
    let w = parse_json(CAPTURE_B_JSON.as_bytes()).unwrap();
    let v = serde_json::to_value(&w).unwrap();
    assert_eq!(v["account"]["id"], 33981183);
    assert_eq!(v["events"][0]["event"], "message");
    assert_eq!(v["events"][0]["direction"], "incoming");
    assert_eq!(v["events"][1]["attachment"]["kind"], "voice");
}

// ---------------------------------------------------------------------------------------------
// Form vs JSON equivalence
// ---------------------------------------------------------------------------------------------

/// A string with at least one non-whitespace character, including bytes that need escaping.
fn non_blank() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 çãéÓ😀&=+%#\\[\\]/?.:-]{0,12}[a-zA-Z0-9çã😀&=+%\\[\\]]"
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\PC{0,40}",
        "[ a-zA-Z&=+%\\[\\]\n\t]{0,20}",
    ]
}

prop_compose! {
    fn author()(
        id in proptest::option::of(non_blank()),
        kind in proptest::option::of(prop_oneof![Just("external".to_owned()), Just("internal".to_owned()), non_blank()]),
        name in proptest::option::of(non_blank()),
    ) -> Author {
        Author { id, kind, name }
    }
}

prop_compose! {
    fn attachment()(
        kind in prop_oneof![Just("voice".to_owned()), Just("picture".to_owned()), non_blank()],
        link in non_blank(),
        file_name in proptest::option::of(non_blank()),
    ) -> AttachmentItem {
        AttachmentItem { kind, link, file_name }
    }
}

prop_compose! {
    fn message_item()(
        id in "[A-Za-z0-9-]{1,36}",
        chat_id in proptest::option::of(non_blank()),
        talk_id in proptest::option::of(any::<u64>()),
        contact_id in 1..=u64::MAX,
        lead_id in proptest::option::of(any::<u64>()),
        text in any_text(),
        created_at in any::<i64>(),
        outgoing in any::<bool>(),
        author in proptest::option::of(author()),
        attachment in proptest::option::of(attachment()),
        origin in proptest::option::of(non_blank()),
    ) -> MessageItem {
        // An author with no field at all is parsed as no author.
        let author = author.filter(|a| *a != Author::default());
        MessageItem {
            id, chat_id, talk_id, contact_id, lead_id, text, created_at,
            direction: if outgoing { Direction::Outgoing } else { Direction::Incoming },
            author, attachment, origin,
        }
    }
}

/// Field/value pairs of one message item, scalars as strings (`numbers_as_numbers` for JSON).
fn item_fields(
    m: &MessageItem,
    numbers_as_numbers: bool,
) -> Vec<(Vec<&'static str>, serde_json::Value)> {
    let num = |n: u64| {
        if numbers_as_numbers {
            json!(n)
        } else {
            json!(n.to_string())
        }
    };
    let mut f: Vec<(Vec<&'static str>, serde_json::Value)> = vec![
        (vec!["id"], json!(m.id)),
        (vec!["contact_id"], num(m.contact_id)),
        (vec!["text"], json!(m.text)),
        (
            vec!["created_at"],
            if numbers_as_numbers {
                json!(m.created_at)
            } else {
                json!(m.created_at.to_string())
            },
        ),
        (
            vec!["type"],
            json!(match m.direction {
                Direction::Incoming => "incoming",
                Direction::Outgoing => "outgoing",
            }),
        ),
    ];
    if let Some(v) = &m.chat_id {
        f.push((vec!["chat_id"], json!(v)));
    }
    if let Some(v) = m.talk_id {
        f.push((vec!["talk_id"], num(v)));
    }
    if let Some(v) = m.lead_id {
        f.push((vec!["element_type"], num(2)));
        f.push((vec!["entity_type"], json!("lead")));
        f.push((vec!["element_id"], num(v)));
        f.push((vec!["entity_id"], num(v)));
    }
    if let Some(a) = &m.author {
        for (k, v) in [("id", &a.id), ("type", &a.kind), ("name", &a.name)] {
            if let Some(v) = v {
                f.push((vec!["author", k], json!(v)));
            }
        }
    }
    if let Some(a) = &m.attachment {
        f.push((vec!["attachment", "type"], json!(a.kind)));
        f.push((vec!["attachment", "link"], json!(a.link)));
        if let Some(v) = &a.file_name {
            f.push((vec!["attachment", "file_name"], json!(v)));
        }
    }
    if let Some(v) = &m.origin {
        f.push((vec!["origin"], json!(v)));
    }
    f
}

fn encode_form(items: &[MessageItem], account: Option<u64>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    if let Some(id) = account {
        s.append_pair("account[id]", &id.to_string());
        s.append_pair("account[subdomain]", "acme");
    }
    for (i, m) in items.iter().enumerate() {
        for (path, value) in item_fields(m, false) {
            let key = format!("message[add][{i}][{}]", path.join("]["));
            s.append_pair(&key, value.as_str().unwrap_or_default());
        }
    }
    s.finish()
}

fn encode_json(
    items: &[MessageItem],
    account: Option<u64>,
    numbers: bool,
    as_object: bool,
) -> String {
    let encoded: Vec<serde_json::Value> = items
        .iter()
        .map(|m| {
            let mut obj = serde_json::Map::new();
            for (path, value) in item_fields(m, numbers) {
                match path.as_slice() {
                    [k] => {
                        obj.insert(k.to_string(), value);
                    }
                    [outer, inner] => {
                        obj.entry(outer.to_string())
                            .or_insert_with(|| json!({}))
                            .as_object_mut()
                            .unwrap()
                            .insert(inner.to_string(), value);
                    }
                    _ => unreachable!(),
                }
            }
            serde_json::Value::Object(obj)
        })
        .collect();
    let add = if as_object {
        serde_json::Value::Object(
            encoded
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
        )
    } else {
        serde_json::Value::Array(encoded)
    };
    let mut body = json!({ "message": { "add": add } });
    if let Some(id) = account {
        body["account"] = if numbers {
            json!({"id": id, "subdomain": "acme"})
        } else {
            json!({"id": id.to_string(), "subdomain": "acme"})
        };
    }
    body.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn form_and_json_encodings_agree(
        items in proptest::collection::vec(message_item(), 1..5),
        // Account ids follow the one id rule (1 to 15 digits).
        account in proptest::option::of(1..=999_999_999_999_999_u64),
        numbers in any::<bool>(),
        as_object in any::<bool>(),
    ) {
        let expected = Webhook {
            account: account.map(|id| AccountRef { id: Some(id), subdomain: Some("acme".to_owned()) }),
            events: items.iter().cloned().map(WebhookEvent::Message).collect(),
            unknown: vec![],
            rejected: vec![],
            shaped: true,
        };
        let form_body = encode_form(&items, account);
        let json_body = encode_json(&items, account, numbers, as_object);
        let from_form = parse_form(form_body.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_json = parse_json(json_body.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&from_form, &expected);
        prop_assert_eq!(&from_json, &expected);
        // `parse` picks the right decoder by content type and by sniffing.
        prop_assert_eq!(&parse(form_body.as_bytes()).unwrap(), &expected);
        prop_assert_eq!(&parse(json_body.as_bytes()).unwrap(), &expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_form(&body);
        let _ = parse_json(&body);
        let _ = parse(&body);
    }

    #[test]
    fn arbitrary_bracket_soup_never_panics(body in "[\\[\\]a-z0-9=&%+_]{0,200}") {
        let _ = parse_form(body.as_bytes());
    }
}
