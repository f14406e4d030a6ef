//! Tests of the sellers directory (`conversa::sellers`): sync from a fake Kommo user source, the
//! TTL cache (stale served while one background refresh runs, single-flight under 50 concurrent
//! readers), custom sellers and the last real list surviving a restart on the embedded store,
//! the lookup order (conversation, contact, lead), validation and duplicates.
//!
//! No sleep is used to wait for another task: conditions are polled against a deadline. The
//! only waits are for a TTL to run out, which is the passing of time under test.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use conversa::sellers::*;
use conversa::store::Store;
use conversa::store::embedded::EmbeddedStore;
use conversa_actors::store::MemoryStore;
use serde_json::json;
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------------
// Fakes
// ---------------------------------------------------------------------------------------------

/// A Kommo users API: answers `users` (or fails while `failing`), counts calls, and can be held
/// (a call waits until the gate opens).
struct FakeUsers {
    users: Mutex<Vec<UserRecord>>,
    failing: Mutex<bool>,
    calls: AtomicUsize,
    gate: watch::Sender<bool>,
}

impl FakeUsers {
    fn new(users: Vec<UserRecord>) -> Arc<Self> {
        Arc::new(Self {
            users: Mutex::new(users),
            failing: Mutex::new(false),
            calls: AtomicUsize::new(0),
            gate: watch::channel(true).0,
        })
    }

    fn failing() -> Arc<Self> {
        let f = Self::new(Vec::new());
        *f.failing.lock().unwrap() = true;
        f
    }

    fn set(&self, users: Vec<UserRecord>) {
        *self.users.lock().unwrap() = users;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn hold(&self) {
        self.gate.send_replace(false);
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

#[async_trait]
impl UserSource for FakeUsers {
    async fn active_users(&self) -> Result<Vec<UserRecord>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.subscribe();
        gate.wait_for(|open| *open)
            .await
            .map_err(|e| e.to_string())?;
        if *self.failing.lock().unwrap() {
            return Err("connection refused".into());
        }
        Ok(self.users.lock().unwrap().clone())
    }
}

#[derive(Default)]
struct FakeLeads {
    lead_users: HashMap<u64, u64>,
    talk_contacts: HashMap<u64, u64>,
    lead_calls: AtomicUsize,
    talk_calls: AtomicUsize,
}

#[async_trait]
impl LeadSource for FakeLeads {
    async fn responsible_user(&self, lead_id: u64) -> Result<Option<u64>, String> {
        self.lead_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.lead_users.get(&lead_id).copied())
    }

    async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, String> {
        self.talk_calls.fetch_add(1, Ordering::SeqCst);
        Ok(self.talk_contacts.get(&talk_id).copied())
    }
}

fn user(id: u64, name: &str, phone: Option<&str>, active: bool) -> UserRecord {
    UserRecord {
        kommo_user_id: id,
        name: name.to_owned(),
        phone: phone.map(str::to_owned),
        active,
        amojo_id: None,
    }
}

fn team() -> Vec<UserRecord> {
    vec![
        user(100, "Ana Souza", Some("+55 (11) 98765-4321"), true),
        user(200, "Bruno Lima", None, true),
        user(300, "Carlos (desligado)", None, false),
    ]
}

fn new_seller(name: &str) -> NewSeller {
    NewSeller {
        name: name.to_owned(),
        ..NewSeller::default()
    }
}

fn ids(sellers: &[Seller]) -> Vec<&str> {
    sellers.iter().map(|s| s.id.as_str()).collect()
}

fn memory() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

fn with_ttl(ttl: Duration) -> DirectorySettings {
    DirectorySettings {
        ttl,
        ..DirectorySettings::default()
    }
}

/// Polls `cond` until it holds or `within` runs out (then panics with `what`).
async fn eventually<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The seller JSON and the three sources
// ---------------------------------------------------------------------------------------------

#[test]
fn seller_json_has_exactly_the_documented_shape() {
    let seller = Seller {
        id: "custom-1".into(),
        name: "Ana".into(),
        kommo_user_id: None,
        contact_id: Some(42),
        phone: Some("5511987654321".into()),
        areas: vec!["Trabalhista".into()],
        active: true,
        source: Source::Custom,
        amojo_id: None,
    };
    assert_eq!(
        serde_json::to_value(&seller).unwrap(),
        json!({
            "id": "custom-1", "name": "Ana", "kommo_user_id": null, "contact_id": 42,
            "phone": "5511987654321", "areas": ["Trabalhista"], "active": true, "source": "custom"
        })
    );
    for (source, text) in [
        (Source::Real, "real"),
        (Source::Fictitious, "ficticio"),
        (Source::Custom, "custom"),
    ] {
        assert_eq!(serde_json::to_value(source).unwrap(), json!(text));
        assert_eq!(source.as_str(), text);
    }
    let back: Seller = serde_json::from_value(serde_json::to_value(&seller).unwrap()).unwrap();
    assert_eq!(back, seller);
}

#[tokio::test]
async fn sync_reads_the_active_kommo_users() {
    let users = FakeUsers::new(team());
    let settings = DirectorySettings {
        real_areas: HashMap::from([(100, vec!["Previdenciário".to_owned()])]),
        fictitious: vec![Seller {
            id: String::new(),
            name: "Demo".into(),
            kommo_user_id: None,
            contact_id: Some(7),
            phone: None,
            areas: vec![],
            active: true,
            source: Source::Custom,
            amojo_id: None, // forced to ficticio
        }],
        ..DirectorySettings::default()
    };
    let dir = SellerDirectory::new(memory(), Some(users.clone()), None, settings);
    assert!(dir.has_user_source());

    assert_eq!(
        dir.sync().await.unwrap(),
        2,
        "the inactive user is left out"
    );
    let real = dir.real().await.unwrap();
    assert_eq!(ids(&real), ["kommo-100", "kommo-200"]);
    assert_eq!(real[0].name, "Ana Souza");
    assert_eq!(real[0].kommo_user_id, Some(100));
    assert_eq!(real[0].phone.as_deref(), Some("5511987654321"));
    assert_eq!(real[0].areas, ["Previdenciário"]);
    assert!(real.iter().all(|s| s.source == Source::Real && s.active));

    let fict = dir.fictitious();
    assert_eq!(ids(&fict), ["ficticio-1"]);
    assert_eq!(fict[0].source, Source::Fictitious);

    let custom = dir.add_custom(new_seller("Carla")).await.unwrap();
    assert_eq!(
        ids(&dir.all().await.unwrap()),
        ["kommo-100", "kommo-200", "ficticio-1", &custom.id]
    );
    assert_eq!(
        ids(&dir.dynamic().await.unwrap()),
        ["kommo-100", "kommo-200", &custom.id],
        "dinâmicos = real + custom"
    );

    // A later sync sees a change in Kommo.
    users.set(vec![user(200, "Bruno Lima", None, true)]);
    assert_eq!(dir.sync().await.unwrap(), 1);
    assert_eq!(ids(&dir.real().await.unwrap()), ["kommo-200"]);
}

#[tokio::test]
async fn sync_without_or_with_a_failing_source() {
    let dir = SellerDirectory::new(memory(), None, None, DirectorySettings::default());
    assert_eq!(dir.sync().await, Err(DirectoryError::NotConfigured));
    assert!(
        DirectoryError::NotConfigured
            .to_string()
            .contains("Kommo is not configured")
    );
    assert_eq!(dir.real().await.unwrap(), vec![]);

    let users = FakeUsers::new(team());
    let dir = SellerDirectory::new(memory(), Some(users.clone()), None, Default::default());
    assert_eq!(dir.sync().await.unwrap(), 2);
    *users.failing.lock().unwrap() = true;
    assert!(matches!(dir.sync().await, Err(DirectoryError::Upstream(_))));
    assert_eq!(
        ids(&dir.real().await.unwrap()),
        ["kommo-100", "kommo-200"],
        "a failed sync keeps the previous list"
    );
}

// ---------------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fresh_cache_does_not_call_kommo() {
    let users = FakeUsers::new(team());
    let dir = SellerDirectory::new(memory(), Some(users.clone()), None, Default::default());
    for _ in 0..100 {
        assert_eq!(dir.real().await.unwrap().len(), 2);
        assert!(dir.by_kommo_user(200).await.unwrap().is_some());
    }
    assert_eq!(users.calls(), 1, "one load, then the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_load_is_single_flight() {
    let users = FakeUsers::new(team());
    let dir = Arc::new(SellerDirectory::new(
        memory(),
        Some(users.clone()),
        None,
        Default::default(),
    ));
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let dir = dir.clone();
        readers.spawn(async move { dir.real().await.unwrap().len() });
    }
    while let Some(n) = readers.join_next().await {
        assert_eq!(n.unwrap(), 2);
    }
    assert_eq!(users.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_list_is_served_while_one_refresh_runs() {
    let ttl = Duration::from_millis(200);
    let users = FakeUsers::new(vec![user(100, "Ana", None, true)]);
    let dir = Arc::new(SellerDirectory::new(
        memory(),
        Some(users.clone()),
        None,
        with_ttl(ttl),
    ));
    let loaded_at = Instant::now();
    assert_eq!(ids(&dir.real().await.unwrap()), ["kommo-100"]);
    assert_eq!(users.calls(), 1);

    // Kommo changes, and its next answer is held back.
    users.set(vec![
        user(100, "Ana", None, true),
        user(200, "Bruno", None, true),
    ]);
    users.hold();
    // Let the TTL run out (the passing of time is what is tested here).
    tokio::time::sleep_until((loaded_at + ttl + Duration::from_millis(20)).into()).await;

    // 50 concurrent readers after expiry: all get the stale list at once, one refresh starts.
    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let dir = dir.clone();
        readers.spawn(async move {
            tokio::time::timeout(Duration::from_secs(5), dir.real())
                .await
                .expect("a stale read must not wait for Kommo")
                .unwrap()
        });
    }
    while let Some(list) = readers.join_next().await {
        assert_eq!(ids(&list.unwrap()), ["kommo-100"], "stale list served");
    }
    eventually(
        "the background refresh calls Kommo",
        Duration::from_secs(5),
        || {
            let calls = users.calls();
            async move { calls >= 2 }
        },
    )
    .await;
    // More readers while the refresh is still held: still served, still one refresh.
    for _ in 0..20 {
        assert_eq!(ids(&dir.real().await.unwrap()), ["kommo-100"]);
    }
    assert_eq!(
        users.calls(),
        2,
        "single flight: one source call for all readers"
    );

    users.open();
    eventually(
        "the refreshed list is served",
        Duration::from_secs(5),
        || {
            let dir = dir.clone();
            async move { dir.real().await.unwrap().len() == 2 }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_keeps_serving_the_last_list() {
    let ttl = Duration::from_millis(100);
    let users = FakeUsers::new(team());
    let dir = SellerDirectory::new(memory(), Some(users.clone()), None, with_ttl(ttl));
    let loaded_at = Instant::now();
    assert_eq!(dir.real().await.unwrap().len(), 2);
    *users.failing.lock().unwrap() = true;
    tokio::time::sleep_until((loaded_at + ttl + Duration::from_millis(20)).into()).await;
    assert_eq!(dir.real().await.unwrap().len(), 2);
    eventually(
        "the background refresh was tried",
        Duration::from_secs(5),
        || {
            let calls = users.calls();
            async move { calls >= 2 }
        },
    )
    .await;
    for _ in 0..20 {
        assert_eq!(dir.real().await.unwrap().len(), 2);
    }
}

// ---------------------------------------------------------------------------------------------
// Restarts (embedded store in a temporary directory)
// ---------------------------------------------------------------------------------------------

fn open(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::open(dir).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_sellers_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (first, second) = {
        let dir = SellerDirectory::new(open(data.path()), None, None, Default::default());
        let first = dir
            .add_custom(NewSeller {
                name: "  Carla   Dias ".into(),
                contact_id: Some(5000),
                phone: Some("+55 11 91234-5678".into()),
                areas: vec![" Trabalhista ".into(), "".into(), "Família".into()],
                kommo_user_id: None,
            })
            .await
            .unwrap();
        let second = dir.add_custom(new_seller("Diego")).await.unwrap();
        (first, second)
    }; // the directory and the store are dropped: the file is closed.
    assert_eq!(first.id, "custom-1");
    assert_eq!(first.name, "Carla Dias");
    assert_eq!(first.phone.as_deref(), Some("5511912345678"));
    assert_eq!(first.areas, ["Trabalhista", "Família"]);
    assert_eq!(first.source, Source::Custom);
    assert_eq!(second.id, "custom-2");

    let dir = SellerDirectory::new(open(data.path()), None, None, Default::default());
    assert_eq!(
        dir.custom().await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(dir.by_contact_id(5000).await.unwrap(), Some(first.clone()));
    assert_eq!(dir.by_id("custom-2").await.unwrap(), Some(second));
    let third = dir.add_custom(new_seller("Eva")).await.unwrap();
    assert_eq!(third.id, "custom-3", "ids continue from the stored list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_sellers_survive_a_restart_with_kommo_down() {
    let data = tempfile::tempdir().unwrap();
    {
        let users = FakeUsers::new(team());
        let dir = SellerDirectory::new(open(data.path()), Some(users), None, Default::default());
        assert_eq!(dir.sync().await.unwrap(), 2);
    }
    let users = FakeUsers::failing();
    let settings = DirectorySettings {
        real_areas: HashMap::from([(200, vec!["Cível".to_owned()])]),
        ..DirectorySettings::default()
    };
    let dir = SellerDirectory::new(open(data.path()), Some(users.clone()), None, settings);
    let real = dir.real().await.unwrap();
    assert_eq!(ids(&real), ["kommo-100", "kommo-200"]);
    assert_eq!(real[1].areas, ["Cível"], "current configuration applies");
    assert_eq!(users.calls(), 1, "Kommo was tried first");
    assert_eq!(
        dir.by_phone("11 98765-4321").await.unwrap().unwrap().id,
        "kommo-100"
    );
    assert!(matches!(dir.sync().await, Err(DirectoryError::Upstream(_))));
    assert_eq!(dir.real().await.unwrap().len(), 2);

    // With no Kommo configured at all, the last list is still known.
    drop(dir);
    eventually("the store file is released", Duration::from_secs(5), || {
        let path = data.path().to_owned();
        async move { EmbeddedStore::open(&path).is_ok() }
    })
    .await;
    let dir = SellerDirectory::new(open(data.path()), None, None, Default::default());
    assert_eq!(dir.real().await.unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Lookups
// ---------------------------------------------------------------------------------------------

fn kommo_leads() -> Arc<FakeLeads> {
    Arc::new(FakeLeads {
        lead_users: HashMap::from([(7, 100), (8, 999)]),
        talk_contacts: HashMap::from([(55, 900)]),
        ..FakeLeads::default()
    })
}

#[tokio::test]
async fn lookup_order_is_conversation_then_contact_then_lead() {
    let leads = kommo_leads();
    let dir = SellerDirectory::new(
        memory(),
        Some(FakeUsers::new(team())),
        Some(leads.clone()),
        Default::default(),
    );
    let carla = dir
        .add_custom(NewSeller {
            contact_id: Some(5000),
            ..new_seller("Carla")
        })
        .await
        .unwrap();

    // Nothing assigned yet: the lead's responsible user (Ana, Kommo user 100).
    let (seller, how) = dir
        .responsible(Some(55), None, Some(7), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-100", "lead"));

    // The talk's contact (900) is assigned to Bruno: contact beats lead.
    assert_eq!(
        dir.assign_contact(900, "kommo-200").await.unwrap().id,
        "kommo-200"
    );
    let (seller, how) = dir
        .responsible(Some(55), None, Some(7), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-200", "contact"));
    let (seller, how) = dir.lookup_for_talk(55).await.unwrap().unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-200", "contact"));
    let (seller, how) = dir.lookup_for_contact(900).await.unwrap().unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-200", "contact"));

    // A seller holding the conversation beats both.
    let (seller, how) = dir
        .responsible(Some(55), None, Some(7), Some(&carla.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seller, how.as_str()), (carla.clone(), "conversation"));

    // An assigned id the directory does not know falls through.
    let (seller, how) = dir
        .responsible(Some(55), None, Some(7), Some("gone-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-200", "contact"));

    // An explicit contact id is used as is (no talk resolution needed).
    let (seller, how) = dir
        .responsible(None, Some(901), Some(7), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-100", "lead"));

    // The lead alone; a lead whose user is no seller; an unknown lead; an unassigned contact.
    let (seller, how) = dir.lookup_for_lead(7).await.unwrap().unwrap();
    assert_eq!((seller.id.as_str(), how.as_str()), ("kommo-100", "lead"));
    assert_eq!(dir.lookup_for_lead(8).await.unwrap(), None);
    assert_eq!(dir.lookup_for_lead(12345).await.unwrap(), None);
    assert_eq!(dir.lookup_for_contact(12345).await.unwrap(), None);
    assert_eq!(dir.lookup_for_talk(404).await.unwrap(), None);

    // Unassigning the contact brings the lead back.
    dir.unassign_contact(900).await.unwrap();
    let (_, how) = dir
        .responsible(Some(55), None, Some(7), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(how.as_str(), "lead");

    // Kommo answers are cached: lead 7 and talk 55 were each asked once.
    assert_eq!(
        leads.lead_calls.load(Ordering::SeqCst),
        3,
        "leads 7, 8, 12345"
    );
    assert_eq!(leads.talk_calls.load(Ordering::SeqCst), 2, "talks 55, 404");

    // Assigning to an unknown seller is refused.
    assert_eq!(
        dir.assign_contact(900, "nobody").await.unwrap_err(),
        DirectoryError::NotFound("nobody".into())
    );
}

#[tokio::test]
async fn lookups_without_kommo() {
    let dir = SellerDirectory::new(memory(), None, None, Default::default());
    let ana = dir
        .add_custom(NewSeller {
            contact_id: Some(10),
            ..new_seller("Ana")
        })
        .await
        .unwrap();
    // A conversation or contact assignment still works; the lead step needs Kommo.
    assert_eq!(
        dir.responsible(None, Some(1), None, Some(&ana.id))
            .await
            .unwrap()
            .unwrap()
            .1
            .as_str(),
        "conversation"
    );
    dir.assign_contact(1, &ana.id).await.unwrap();
    assert_eq!(
        dir.responsible(None, Some(1), Some(7), None)
            .await
            .unwrap()
            .unwrap()
            .1
            .as_str(),
        "contact"
    );
    assert_eq!(
        dir.lookup_for_lead(7).await,
        Err(DirectoryError::NotConfigured)
    );
    assert_eq!(
        dir.lookup_for_talk(55).await,
        Err(DirectoryError::NotConfigured)
    );
}

#[tokio::test]
async fn recognising_a_sellers_own_contact() {
    let dir = SellerDirectory::new(
        memory(),
        Some(FakeUsers::new(team())),
        None,
        DirectorySettings {
            fictitious: vec![Seller {
                id: String::new(),
                name: "Demo".into(),
                kommo_user_id: None,
                contact_id: Some(77),
                phone: Some("(21) 3333-4444".into()),
                areas: vec![],
                active: true,
                source: Source::Fictitious,
                amojo_id: None,
            }],
            ..DirectorySettings::default()
        },
    );
    let carla = dir
        .add_custom(NewSeller {
            contact_id: Some(5000),
            phone: Some("11 91234 5678".into()),
            kommo_user_id: Some(200),
            ..new_seller("Carla")
        })
        .await
        .unwrap();
    assert_eq!(dir.by_contact_id(5000).await.unwrap(), Some(carla.clone()));
    assert_eq!(
        dir.by_contact_id(77).await.unwrap().unwrap().id,
        "ficticio-1"
    );
    assert_eq!(dir.by_contact_id(1).await.unwrap(), None);
    assert_eq!(dir.by_contact_id(0).await.unwrap(), None);
    assert_eq!(
        dir.by_phone("+55 11 91234-5678").await.unwrap(),
        Some(carla.clone())
    );
    assert_eq!(
        dir.by_phone("2133334444").await.unwrap().unwrap().id,
        "ficticio-1"
    );
    assert_eq!(dir.by_phone("no digits").await.unwrap(), None);
    // Kommo user 200 is both a real seller and Carla's user: the real one wins.
    assert_eq!(
        dir.by_kommo_user(200).await.unwrap().unwrap().id,
        "kommo-200"
    );
    assert_eq!(
        dir.by_id("kommo-100").await.unwrap().unwrap().name,
        "Ana Souza"
    );
    assert_eq!(
        dir.by_id("100").await.unwrap().unwrap().id,
        "kommo-100",
        "a bare number is a Kommo user id"
    );
    assert_eq!(dir.by_id("custom-99").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Validation and duplicates
// ---------------------------------------------------------------------------------------------

fn field(e: DirectoryError) -> &'static str {
    match e {
        DirectoryError::Invalid { field, .. } | DirectoryError::Duplicate { field, .. } => field,
        other => panic!("not a field error: {other:?}"),
    }
}

#[tokio::test]
async fn invalid_sellers_are_refused_naming_the_field() {
    let dir = SellerDirectory::new(memory(), None, None, Default::default());
    for (new, bad) in [
        (new_seller(""), "name"),
        (new_seller("   "), "name"),
        (new_seller(&"x".repeat(200)), "name"),
        (
            NewSeller {
                contact_id: Some(0),
                ..new_seller("Ana")
            },
            "contact_id",
        ),
        (
            NewSeller {
                kommo_user_id: Some(0),
                ..new_seller("Ana")
            },
            "kommo_user_id",
        ),
        (
            NewSeller {
                phone: Some("abc".into()),
                ..new_seller("Ana")
            },
            "phone",
        ),
        (
            NewSeller {
                phone: Some("1234".into()),
                ..new_seller("Ana")
            },
            "phone",
        ),
    ] {
        let e = dir.add_custom(new.clone()).await.unwrap_err();
        assert!(
            matches!(e, DirectoryError::Invalid { .. }),
            "{new:?} → {e:?}"
        );
        assert_eq!(field(e), bad, "{new:?}");
    }
    assert_eq!(dir.custom().await.unwrap(), vec![], "nothing stored");
    // An empty phone is no phone.
    let ok = dir
        .add_custom(NewSeller {
            phone: Some("  ".into()),
            ..new_seller("Ana")
        })
        .await
        .unwrap();
    assert_eq!(ok.phone, None);
}

#[tokio::test]
async fn duplicates_are_refused() {
    let dir = SellerDirectory::new(
        memory(),
        Some(FakeUsers::new(team())),
        None,
        Default::default(),
    );
    let carla = dir
        .add_custom(NewSeller {
            contact_id: Some(5000),
            phone: Some("+55 11 91234-5678".into()),
            kommo_user_id: Some(100),
            ..new_seller("Carla")
        })
        .await
        .unwrap();

    let e = dir
        .add_custom(NewSeller {
            contact_id: Some(5000),
            ..new_seller("Other")
        })
        .await
        .unwrap_err();
    assert_eq!(
        e,
        DirectoryError::Duplicate {
            field: "contact_id",
            value: "5000".into(),
            seller_id: carla.id.clone()
        }
    );
    // The same number written differently, without the country code.
    let e = dir
        .add_custom(NewSeller {
            phone: Some("(11) 91234-5678".into()),
            ..new_seller("Other")
        })
        .await
        .unwrap_err();
    assert_eq!(field(e), "phone");
    // A real seller's phone.
    let e = dir
        .add_custom(NewSeller {
            phone: Some("11987654321".into()),
            ..new_seller("Other")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, DirectoryError::Duplicate { field: "phone", seller_id, .. } if seller_id == "kommo-100"),
        "{e:?}"
    );
    // A Kommo user already enriched by a custom seller.
    let e = dir
        .add_custom(NewSeller {
            kommo_user_id: Some(100),
            ..new_seller("Other")
        })
        .await
        .unwrap_err();
    assert_eq!(field(e), "kommo_user_id");
    assert_eq!(dir.custom().await.unwrap(), vec![carla]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_additions_get_distinct_ids() {
    let dir = Arc::new(SellerDirectory::new(
        memory(),
        None,
        None,
        Default::default(),
    ));
    let mut adders = tokio::task::JoinSet::new();
    for i in 0..20u64 {
        let dir = dir.clone();
        adders.spawn(async move {
            dir.add_custom(NewSeller {
                contact_id: Some(1000 + i),
                ..new_seller(&format!("Seller {i}"))
            })
            .await
            .unwrap()
            .id
        });
    }
    let mut got = Vec::new();
    while let Some(id) = adders.join_next().await {
        got.push(id.unwrap());
    }
    got.sort();
    let mut want: Vec<String> = (1..=20).map(|n| format!("custom-{n}")).collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(dir.custom().await.unwrap().len(), 20);
}

/// Two nodes on one Redis adding custom sellers at the same moment: each addition lands (the
/// list is written by compare-and-set and read again on a conflict), none overwrites another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_adding_custom_sellers_at_once_lose_none() {
    use conversa::store::redis::{RedisSettings, RedisStore};

    let redis = support::redis_server::RedisServer::start();
    let node = || async {
        let store = RedisStore::connect(&redis.url(), RedisSettings::default())
            .await
            .unwrap();
        Arc::new(SellerDirectory::new(
            Arc::new(store),
            None,
            None,
            DirectorySettings::default(),
        ))
    };
    let nodes = [node().await, node().await];
    let mut additions = Vec::new();
    for i in 0..30 {
        let dir = nodes[i % 2].clone();
        additions.push(tokio::spawn(async move {
            dir.add_custom(new_seller(&format!("Vendedora {i}")))
                .await
                .unwrap()
        }));
    }
    let mut added = Vec::new();
    for a in additions {
        added.push(a.await.unwrap().id);
    }
    added.sort();
    added.dedup();
    assert_eq!(added.len(), 30, "each addition got its own id");
    // A third node reading the store finds all thirty.
    let stored = node().await.custom().await.unwrap();
    let mut stored_ids: Vec<String> = stored.iter().map(|s| s.id.clone()).collect();
    stored_ids.sort();
    assert_eq!(stored_ids, added);
}
