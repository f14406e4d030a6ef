//! The Kommo client and token manager wired to the fake Kommo, for the tests of the client.

use std::sync::Arc;
use std::time::Duration;

use conversa::kommo::client::{KommoClient, KommoSettings};
use conversa::kommo::oauth::{OAuthSettings, TokenManager, Tokens};
use conversa::store::Store;
use conversa_actors::store::MemoryStore;

use super::fake_kommo::{self, FakeKommo};
use super::redis_server::RedisServer;
use conversa::store::redis::{RedisSettings, RedisStore};

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

/// A client as an engine node has it, on a shared Redis: its own Redis connection, token manager (seeded from
/// the same environment as the others) and client.
pub async fn node_on_redis(fake: &FakeKommo, redis: &RedisServer, seed: &Tokens) -> KommoClient {
    node_on_redis_with_tokens(fake, redis, seed).await.1
}

/// [`node_on_redis`], its token manager too (for the OAuth callback's code exchange).
pub async fn node_on_redis_with_tokens(
    fake: &FakeKommo,
    redis: &RedisServer,
    seed: &Tokens,
) -> (TokenManager, KommoClient) {
    let redis_settings = RedisSettings {
        response_timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
        ..RedisSettings::default()
    };
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&redis.url(), redis_settings)
            .await
            .expect("redis"),
    );
    let tokens = manager(fake, store, Some(seed.clone()));
    tokens.load().await.expect("tokens");
    (tokens.clone(), client_with(tokens, settings(fake)))
}
