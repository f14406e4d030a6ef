//! The client's reads and writes against the fake Kommo: the account, leads (with contacts),
//! contacts, talks, notes, lead patches and Salesbot runs (a 5xx run is never retried; refused
//! runs leave nothing in doubt), each call counted in `conversa_kommo_calls_total`. A test binary of its
//! own: the call counters are the process's, and no other test may add to them.

mod support;

use conversa::kommo::client::LeadPatch;
use conversa::kommo::error::KommoError;
use conversa_actors::Commitment;
use serde_json::json;
use support::fake_kommo::{self, FakeContact, FakeKommo, FakeLead, FakeTalk};
use support::kommo_client::client;
use support::metrics;

#[tokio::test]
async fn reads_and_writes_entities() {
    metrics::install();
    let fake = FakeKommo::start().await;
    let client = client(&fake);
    let account = client.account().await.unwrap();
    assert_eq!(
        (
            account.id,
            account.name.as_str(),
            account.subdomain.as_str()
        ),
        (
            fake_kommo::ACCOUNT_ID,
            fake_kommo::ACCOUNT_NAME,
            "fakeconta"
        )
    );

    let mut lead = FakeLead::new(878_244);
    lead.responsible_user_id = 504_141;
    lead.contact_ids = vec![1_298_200];
    fake.add_lead(lead);
    fake.add_lead_field(3);
    let mut contact = FakeContact::new(1_298_200, "Douglas Augusto");
    contact.phones = vec!["+5511999990000".into()];
    fake.add_contact(contact);
    fake.add_talk(FakeTalk::new(109, 1_298_200, Some(878_244)));

    let lead = client.lead(878_244, true).await.unwrap().unwrap();
    assert_eq!(lead.contact_ids, vec![1_298_200]);
    assert_eq!(lead.responsible_user_id, 504_141);
    assert!(lead.custom_fields.is_null());
    let no_contacts = client.lead(878_244, false).await.unwrap().unwrap();
    assert!(no_contacts.contact_ids.is_empty());

    let contact = client.contact(1_298_200).await.unwrap().unwrap();
    assert_eq!(contact.phones, vec!["+5511999990000".to_owned()]);
    let talk = client.talk(109).await.unwrap().unwrap();
    assert_eq!(
        (talk.id, talk.contact_id, talk.lead_id, talk.is_in_work),
        (109, 1_298_200, Some(878_244), true)
    );

    let note_id = client.add_note(878_244, "IA pausada").await.unwrap();
    assert_eq!(fake.notes().len(), 1);
    assert_eq!(fake.notes()[0].id, note_id);
    assert_eq!(fake.notes()[0].text, "IA pausada");
    assert_eq!(fake.notes()[0].note_type, "common");

    let patch = LeadPatch {
        custom_fields: vec![(3, json!("resposta da IA"))],
        tags_to_add: vec!["ia-off".into()],
        tags_to_delete: vec![],
    };
    client.patch_lead(878_244, &patch).await.unwrap();
    let lead = client.lead(878_244, false).await.unwrap().unwrap();
    assert_eq!(
        lead.custom_fields[0]["values"][0]["value"],
        json!("resposta da IA")
    );
    assert_eq!(lead.tags, vec!["ia-off".to_owned()]);
    assert_eq!(fake.patches().len(), 1);

    client
        .run_salesbot(84_562, 878_244, &Commitment::default())
        .await
        .unwrap();
    let runs = fake.salesbot_runs();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].bot_id, runs[0].entity_id, runs[0].entity_type),
        (84_562, 878_244, 2)
    );

    // A 5xx is not retried by the client (the bot may have run already), and the caller is
    // told the run is in doubt.
    fake.set_server_error_on_salesbot(1);
    let in_doubt = Commitment::default();
    let err = client
        .run_salesbot(84_562, 878_244, &in_doubt)
        .await
        .unwrap_err();
    assert!(
        matches!(err, KommoError::Server { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable(), "the caller decides");
    assert!(in_doubt.is_marked(), "a 5xx leaves the run in doubt");
    let runs = fake.salesbot_runs();
    assert_eq!(runs.len(), 2, "exactly one attempt");
    assert_eq!(runs[1].status, 500);

    // 429s prove the bot did not run: once the client gives up on them, nothing is in doubt.
    fake.fail_next("/api/v2/salesbot/run", 429, 10);
    let in_doubt = Commitment::default();
    let err = client
        .run_salesbot(84_562, 878_244, &in_doubt)
        .await
        .unwrap_err();
    assert!(matches!(err, KommoError::RateLimited { .. }), "{err:?}");
    assert!(!in_doubt.is_marked(), "refused runs are safe to retry");
    assert_eq!(fake.salesbot_runs().len(), 2, "no run was carried out");

    let calls = metrics::rendered();
    let count = |series: &str| metrics::value(&calls, series);
    assert_eq!(
        count(r#"conversa_kommo_calls_total{endpoint="POST /api/v2/salesbot/run",status="500"}"#),
        Some(1.0),
        "{calls}"
    );
    assert_eq!(
        count(r#"conversa_kommo_calls_total{endpoint="GET /api/v4/leads/{id}",status="200"}"#),
        Some(3.0),
        "{calls}"
    );
}
