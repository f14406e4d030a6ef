//! Reply tokens: the proof that a `/send-response` answers a dispatch conversa really made.
//!
//! Dispatch ids are predictable (`<epoch>-<contact>-<seq>`), so an id alone proves nothing: a
//! forged callback naming `0-4242-1` would otherwise be delivered to the customer. Every
//! dispatch's `callback_url` carries `?reply_token=<HMAC-SHA256(key, account:contact:dispatch)>`
//! (128 bits, hex); `/send-response` accepts a reply only with the token of the dispatch it
//! names, or with the configured `N8N_CALLBACK_TOKEN` as a bearer token.
//!
//! The key is made from the OS's randomness at the first start and kept in the store
//! (`reply_token:key`), so tokens stay valid across restarts and every node sharing the store
//! agrees on them; the first node to store it wins (`Store::put_value_if_absent`).

use conversa_actors::ContactKey;
use conversa_actors::store::{Store, StoreError};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::redact::secret_matches;

/// The store value holding the key.
const KEY_NAME: &str = "reply_token:key";
/// Bytes of MAC kept in a token (hex: twice as many characters).
const TOKEN_BYTES: usize = 16;

/// Makes and checks reply tokens.
#[derive(Clone)]
pub struct ReplyTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for ReplyTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyTokens(..)")
    }
}

impl ReplyTokens {
    /// The store's key, made and stored on the first start.
    pub async fn load_or_create(store: &dyn Store) -> Result<Self, StoreError> {
        if let Some(key) = store.get_value(KEY_NAME).await?
            && key.len() >= 32
        {
            return Ok(Self { key });
        }
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| {
            StoreError::Unavailable(format!("no randomness for the reply key: {e}"))
        })?;
        let key = store.put_value_if_absent(KEY_NAME, &fresh).await?;
        Ok(Self { key })
    }

    /// Tokens under a fresh key of this process only (until the store's key is loaded).
    pub fn ephemeral() -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS provides randomness");
        Self { key: key.to_vec() }
    }

    /// Tokens under a given key (tests, tools).
    pub fn with_key(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    /// The token of `dispatch_id` of contact `key`.
    pub fn token(&self, key: ContactKey, dispatch_id: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any size");
        mac.update(format!("{}:{}:{dispatch_id}", key.account_id, key.contact_id).as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..TOKEN_BYTES])
    }

    /// Whether `token` is the token of `dispatch_id` of contact `key` (constant time).
    pub fn verify(&self, key: ContactKey, dispatch_id: &str, token: &str) -> bool {
        secret_matches(&self.token(key, dispatch_id), token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_proves_one_dispatch_of_one_contact() {
        let tokens = ReplyTokens::with_key(&[7u8; 32]);
        let a = ContactKey::new(0, 4242);
        let t = tokens.token(a, "0-4242-1");
        assert_eq!(t.len(), 2 * TOKEN_BYTES);
        assert!(tokens.verify(a, "0-4242-1", &t));
        assert!(!tokens.verify(a, "0-4242-2", &t));
        assert!(!tokens.verify(ContactKey::new(0, 4243), "0-4242-1", &t));
        assert!(!tokens.verify(ContactKey::new(1, 4242), "0-4242-1", &t));
        assert!(!ReplyTokens::with_key(&[8u8; 32]).verify(a, "0-4242-1", &t));
        assert!(!tokens.verify(a, "0-4242-1", ""));
    }
}
