//! Who a conversation belongs to.
//!
//! Kommo identifies a customer by a numeric contact id inside a numeric account. One engine may
//! serve several Kommo accounts, so every conversation, actor, store key and timer is keyed by
//! the pair. Account `0` stands for "the configured account" when the caller does not know it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch. The engine's only notion of time: the state machine is
/// handed `now` in this unit, timers are stored in it, and it survives restarts (unlike
/// `Instant`).
pub type Millis = u64;

/// The identity of one conversation: a Kommo contact inside a Kommo account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContactKey {
    pub account_id: u64,
    pub contact_id: u64,
}

impl ContactKey {
    pub fn new(account_id: u64, contact_id: u64) -> Self {
        Self {
            account_id,
            contact_id,
        }
    }
}

/// `account:contact`, the form used in store keys, indexes and logs.
impl fmt::Display for ContactKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.account_id, self.contact_id)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a contact key (want `account:contact`): {0:?}")]
pub struct BadContactKey(pub String);

impl FromStr for ContactKey {
    type Err = BadContactKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadContactKey(s.to_owned());
        let (a, c) = s.split_once(':').ok_or_else(bad)?;
        Ok(Self::new(
            a.parse().map_err(|_| bad())?,
            c.parse().map_err(|_| bad())?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let k = ContactKey::new(33981183, 1298200);
        assert_eq!(k.to_string(), "33981183:1298200");
        assert_eq!(k.to_string().parse::<ContactKey>().unwrap(), k);
        assert!("12".parse::<ContactKey>().is_err());
        assert!("a:1".parse::<ContactKey>().is_err());
    }
}
