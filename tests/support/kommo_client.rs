//! The Kommo client and token manager wired to the fake Kommo, for the tests of the client.

use std::sync::Arc;
use std::time::Duration;

use conversa::kommo::client::{KommoClient, KommoSettings};
use conversa::kommo::oauth::{OAuthSettings, TokenManager, Tokens};
use conversa::store::Store;
use conversa_actors::store::MemoryStore;

use super::fake_kommo::{self, FakeKommo};

pub const KEY: &str = "kommo:tokens:fakeconta";

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn oauth(fake: &FakeKommo, seed: Option<Tokens>) -> OAuthSettings {
    OAuthSettings {
        client_id: fake_kommo::CLIENT_ID.into(),
        client_secret: fake_kommo::CLIENT_SECRET.into(),
        redirect_uri: fake_kommo::REDIRECT_URI.into(),
        base_url: fake.base_url(),
        account_key: KEY.into(),
        seed,
    }
}

pub fn seed_pair(fake: &FakeKommo) -> Tokens {
    let (access, refresh) = fake.issue_tokens();
    Tokens {
        access_token: access,
        refresh_token: Some(refresh),
        expires_at: Some(now_unix() + 86_400),
    }
}

pub fn settings(fake: &FakeKommo) -> KommoSettings {
    KommoSettings {
        timeout: Duration::from_secs(5),
        ..KommoSettings::new(fake.api_url())
    }
}

pub fn manager(fake: &FakeKommo, store: Arc<dyn Store>, seed: Option<Tokens>) -> TokenManager {
    TokenManager::new(
        store,
        conversa::kommo::client::http_client(),
        oauth(fake, seed),
    )
}

pub fn client_with(tokens: TokenManager, s: KommoSettings) -> KommoClient {
    KommoClient::new(s, tokens).expect("client")
}

/// A client on a fresh in-memory store, seeded with a valid pair.
pub fn client(fake: &FakeKommo) -> KommoClient {
    let tokens = manager(fake, Arc::new(MemoryStore::new()), Some(seed_pair(fake)));
    client_with(tokens, settings(fake))
}
