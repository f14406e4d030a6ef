//! HTTP tests of the sellers routes (`conversa::http::sellers`) on a real listener: the original
//! paths and body aliases (`nome`, `telefone`, `areas_atuacao` / `area_atuacao` as a string or a
//! list), 201 / 400 naming the field / 409, sync with and without Kommo, and the lookups with
//! the engine's conversation first.
//!
//! The requests go through the app's own router (`conversa::app::routes()`) with an `AppState`
//! holding the directory, so the wiring is tested too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use conversa::app::AppState;
use conversa::config::Config;
use conversa::sellers::*;
use conversa::store::Store;
use conversa_actors::store::MemoryStore;
use conversa_actors::{Engine, EngineConfig, Event, Executors, Links, SellerRef};
use serde_json::{Value, json};

struct Users(Vec<UserRecord>);

#[async_trait]
impl UserSource for Users {
    async fn active_users(&self) -> Result<Vec<UserRecord>, String> {
        Ok(self.0.clone())
    }
}

struct Leads {
    lead_users: HashMap<u64, u64>,
    talk_contacts: HashMap<u64, u64>,
}

#[async_trait]
impl LeadSource for Leads {
    async fn responsible_user(&self, lead_id: u64) -> Result<Option<u64>, String> {
        Ok(self.lead_users.get(&lead_id).copied())
    }

    async fn talk_contact(&self, talk_id: u64) -> Result<Option<u64>, String> {
        Ok(self.talk_contacts.get(&talk_id).copied())
    }
}

struct Server {
    addr: SocketAddr,
    http: reqwest::Client,
    app: AppState,
    sellers: Arc<SellerDirectory>,
}

impl Server {
    async fn start(kommo: bool) -> Server {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let engine = Engine::start(store.clone(), Executors::default(), EngineConfig::default())
            .await
            .unwrap();
        let mut users: Option<Arc<dyn UserSource>> = None;
        let mut leads: Option<Arc<dyn LeadSource>> = None;
        if kommo {
            users = Some(Arc::new(Users(vec![
                UserRecord {
                    kommo_user_id: 100,
                    name: "Ana Souza".into(),
                    phone: Some("+55 11 98765-4321".into()),
                    active: true,
                    amojo_id: None,
                },
                UserRecord {
                    kommo_user_id: 200,
                    name: "Bruno Lima".into(),
                    phone: None,
                    active: true,
                    amojo_id: None,
                },
            ])));
            leads = Some(Arc::new(Leads {
                lead_users: HashMap::from([(7, 100)]),
                talk_contacts: HashMap::from([(55, 900), (56, 901)]),
            }));
        }
        let sellers = Arc::new(SellerDirectory::new(
            store,
            users,
            leads,
            DirectorySettings {
                fictitious: vec![Seller {
                    id: String::new(),
                    name: "Demo".into(),
                    kommo_user_id: None,
                    contact_id: None,
                    phone: None,
                    areas: vec!["Demonstração".into()],
                    active: true,
                    source: Source::Fictitious,
                    amojo_id: None,
                }],
                ..DirectorySettings::default()
            },
        ));
        let config = Config::parse_from(["conversa", "--kommo-account-id", "1"]);
        let app = AppState::new(engine, &config, sellers.clone());
        assert!(Arc::ptr_eq(app.sellers(), &sellers));
        let router = conversa::app::routes().with_state(app.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Server {
            addr,
            http: reqwest::Client::new(),
            app,
            sellers,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

fn ids(listing: &Value) -> Vec<&str> {
    listing["vendedores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adicionar_accepts_the_original_keys() {
    let s = Server::start(false).await;
    let (status, body) = s
        .post(
            "/vendedores/adicionar",
            json!({
                "nome": "Carla Dias",
                "telefone": "+55 (11) 91234-5678",
                "areas_atuacao": "Trabalhista, Previdenciário ;  ",
                "contact_id": "5000"
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({
            "id": "custom-1", "name": "Carla Dias", "kommo_user_id": null, "contact_id": 5000,
            "phone": "5511912345678", "areas": ["Trabalhista", "Previdenciário"],
            "active": true, "source": "custom"
        })
    );

    let (status, body) = s
        .post(
            "/vendedores/adicionar",
            json!({"name": "Diego", "area_atuacao": [" Cível ", "Família"], "phone": 21999887766u64, "kommo_user_id": 300}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "custom-2");
    assert_eq!(body["areas"], json!(["Cível", "Família"]));
    assert_eq!(body["phone"], "21999887766");
    assert_eq!(body["kommo_user_id"], 300);

    let (status, body) = s
        .post(
            "/vendedores/adicionar",
            json!({"name": "Eva", "areas": "Tributário"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["areas"], json!(["Tributário"]));

    let (status, all) = s.get("/vendedores").await;
    assert_eq!(status, 200);
    assert_eq!(all["total"], 4);
    assert_eq!(
        ids(&all),
        ["ficticio-1", "custom-1", "custom-2", "custom-3"]
    );
    let (_, dynamic) = s.get("/vendedores/dinamicos").await;
    assert_eq!(dynamic["total"], 3);
    assert_eq!(ids(&dynamic), ["custom-1", "custom-2", "custom-3"]);
    let (status, real) = s.get("/vendedores/reais").await;
    assert_eq!(status, 200);
    assert_eq!(real, json!({"total": 0, "vendedores": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adicionar_refuses_bad_input_and_duplicates() {
    let s = Server::start(false).await;
    for (body, field) in [
        (json!({}), "name"),
        (json!({"nome": "  "}), "name"),
        (json!({"nome": "Ana", "contact_id": "abc"}), "contact_id"),
        (json!({"nome": "Ana", "contact_id": 0}), "contact_id"),
        (json!({"nome": "Ana", "telefone": "12"}), "phone"),
        (json!({"nome": "Ana", "areas_atuacao": 5}), "areas_atuacao"),
    ] {
        let (status, answer) = s.post("/vendedores/adicionar", body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"], "bad_request", "{answer}");
        assert_eq!(answer["field"], field, "{body} → {answer}");
    }

    let (status, _) = s
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Ana", "contact_id": 10, "telefone": "11 98765-4321"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, answer) = s
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Outra", "contact_id": 10}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "conflict");
    assert_eq!(answer["field"], "contact_id");
    let (status, answer) = s
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Outra", "telefone": "+55 11 98765-4321"}),
        )
        .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["field"], "phone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sincronizar_with_and_without_kommo() {
    let s = Server::start(false).await;
    let (status, body) = s.post("/vendedores/sincronizar", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "kommo_not_configured");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Kommo is not configured"),
        "{body}"
    );

    let s = Server::start(true).await;
    let (status, body) = s.post("/vendedores/sincronizar", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"synced": 2}));
    let (_, real) = s.get("/vendedores/reais").await;
    assert_eq!(ids(&real), ["kommo-100", "kommo-200"]);
    assert_eq!(real["vendedores"][0]["source"], "real");
    let (_, all) = s.get("/vendedores").await;
    assert_eq!(ids(&all), ["kommo-100", "kommo-200", "ficticio-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendedor_lookups_conversation_first() {
    let s = Server::start(true).await;
    let (_, carla) = s
        .post(
            "/vendedores/adicionar",
            json!({"nome": "Carla", "contact_id": 5000}),
        )
        .await;

    // Talk 55 → contact 900, no conversation, no assignment, no lead known: nothing.
    let (status, body) = s.get("/vendedor/conversa/55").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "not_found");

    // The conversation of contact 900 is linked to lead 7 (Kommo user 100): found by lead.
    let key = s.app.contact(900);
    s.app
        .engine()
        .apply(
            key,
            Event::LinksSeen(Links {
                lead_id: Some(7),
                talk_id: Some(55),
                chat_id: None,
            }),
        )
        .await
        .unwrap();
    let (status, body) = s.get("/vendedor/conversa/55").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["found_by"], "lead");
    assert_eq!(body["vendedor"]["id"], "kommo-100");

    // Carla takes the conversation: the conversation wins.
    s.app
        .engine()
        .apply(
            key,
            Event::Assume {
                seller: SellerRef {
                    id: carla["id"].as_str().unwrap().to_owned(),
                    name: "Carla".into(),
                },
                by: "test".into(),
            },
        )
        .await
        .unwrap();
    let (status, body) = s.get("/vendedor/conversa/55").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["found_by"], "conversation");
    assert_eq!(body["vendedor"], carla);
    let (_, body) = s.get("/vendedor/contato/900").await;
    assert_eq!(body["found_by"], "conversation");

    // Talk 56 → contact 901, assigned to Bruno at the contact level.
    s.app
        .engine()
        .apply(
            s.app.contact(901),
            Event::LinksSeen(Links {
                lead_id: Some(7),
                talk_id: Some(56),
                chat_id: None,
            }),
        )
        .await
        .unwrap();
    let (status, body) = s.get("/vendedor/contato/901").await;
    assert_eq!((status, &body["found_by"]), (200, &json!("lead")), "{body}");
    s.sellers.assign_contact(901, "kommo-200").await.unwrap();
    for path in ["/vendedor/contato/901", "/vendedor/conversa/56"] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["found_by"], "contact", "{path}");
        assert_eq!(body["vendedor"]["id"], "kommo-200", "{path}");
    }
    let (status, body) = s.get("/vendedor/lead/7").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["found_by"], "lead");
    assert_eq!(body["vendedor"]["name"], "Ana Souza");

    // Not found, bad ids.
    let (status, body) = s.get("/vendedor/lead/8").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.get("/vendedor/conversa/999").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.get("/vendedor/contato/12345").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = s.get("/vendedor/lead/abc").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "lead_id");
    let (status, body) = s.get("/vendedor/conversa/0").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "talk_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendedor_lookups_need_kommo_for_talks_and_leads() {
    let s = Server::start(false).await;
    let (status, body) = s.get("/vendedor/conversa/55").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "kommo_not_configured");
    let (status, body) = s.get("/vendedor/lead/7").await;
    assert_eq!(status, 503, "{body}");
    // The same situation, the same answer on all three lookups (the contact's responsible
    // Kommo user cannot be asked either).
    let (status, body) = s.get("/vendedor/contato/900").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "kommo_not_configured");
}
