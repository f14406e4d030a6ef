//! The settings that decide whether customers get answered, taken from the configuration once
//! (the checks and the setup never read `Config` themselves).

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

use crate::config::Config;

/// What stays as is in a path segment (RFC 3986 unreserved); everything else is encoded.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
use crate::reply::Strategy;

/// The Kommo events conversa acts on: customer (and, where Kommo sends them, seller) messages,
/// the talks that tie a chat to its lead, and unsorted leads accepted.
/// `add_message` and `add_unsorted` are Kommo-only codes (docs/kommo.md: unconfirmed spelling).
pub const WEBHOOK_EVENTS: &[&str] = &["add_message", "add_talk", "update_talk", "add_unsorted"];

/// The lead field conversa writes replies into, when `setup kommo` creates it.
pub const REPLY_FIELD_NAME: &str = "Resposta do assistente (conversa)";
/// Its code, by which a second run finds it again.
pub const REPLY_FIELD_CODE: &str = "CONVERSA_REPLY";
/// `textarea`: a reply can be longer than a `text` field holds.
pub const REPLY_FIELD_KIND: &str = "textarea";
/// Field types the Salesbot can print as a message.
pub const TEXT_KINDS: &[&str] = &["text", "textarea"];

/// What a live deployment is made of.
#[derive(Clone, Debug, Default)]
pub struct Target {
    pub kommo_api_url: Option<String>,
    /// A long-lived token or an OAuth pair is configured.
    pub kommo_credentials: bool,
    pub kommo_account_id: u64,
    pub kommo_subdomain: Option<String>,
    pub public_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub n8n_webhook_url: Option<String>,
    pub n8n_shared_secret: bool,
    pub api_key: bool,
    pub reply_channel: Option<Strategy>,
    pub reply_field_id: Option<u64>,
    pub reply_bot_id: Option<u64>,
}

fn set(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Target {
    pub fn from_config(config: &Config) -> Self {
        let token = set(&config.kommo_access_token).is_some();
        let oauth =
            set(&config.kommo_client_id).is_some() && set(&config.kommo_client_secret).is_some();
        Target {
            kommo_api_url: set(&config.kommo_api_url),
            kommo_credentials: token || oauth,
            kommo_account_id: config.kommo_account_id,
            kommo_subdomain: set(&config.kommo_subdomain),
            public_url: set(&config.public_url).map(|u| u.trim_end_matches('/').to_owned()),
            webhook_secret: set(&config.webhook_secret),
            n8n_webhook_url: set(&config.n8n_webhook_url),
            n8n_shared_secret: set(&config.n8n_shared_secret).is_some(),
            api_key: set(&config.api_key).is_some(),
            reply_channel: config.reply_strategy(),
            reply_field_id: config.kommo_reply_field_id,
            reply_bot_id: config.kommo_reply_bot_id,
        }
    }

    /// `PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>`: where Kommo must send its webhooks. The
    /// secret is percent-encoded (a `#`, `/`, `?` or space in it would otherwise make another
    /// address); the route decodes it back. `None` without both settings or with a
    /// `PUBLIC_URL` that is no base address ([`Target::public_url_problem`]).
    pub fn webhook_destination(&self) -> Option<String> {
        if self.public_url_problem().is_some() {
            return None;
        }
        let secret = self.webhook_secret.as_deref()?;
        Some(format!(
            "{}/webhooks/kommo/{}",
            self.public_url.as_deref()?,
            percent_encoding::utf8_percent_encode(secret, PATH_SEGMENT)
        ))
    }

    /// What is wrong with `PUBLIC_URL` as the base of conversa's addresses: not an http(s) URL,
    /// no host, or a query, fragment or credentials in it. `None` when it is fine or unset.
    pub fn public_url_problem(&self) -> Option<String> {
        let raw = self.public_url.as_deref()?;
        let Ok(url) = reqwest::Url::parse(raw) else {
            return Some("is not a URL (https://conversa.example.com)".into());
        };
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            Some("must be an http(s) address with a host".into())
        } else if url.query().is_some() || url.fragment().is_some() {
            Some("must be a base address: no ?query or #fragment (conversa appends paths)".into())
        } else if !url.username().is_empty() || url.password().is_some() {
            Some("must not carry credentials".into())
        } else {
            None
        }
    }

    /// The same address with the secret masked, for output and logs.
    pub fn webhook_destination_shown(&self) -> String {
        format!(
            "{}/webhooks/kommo/***",
            self.public_url
                .as_deref()
                .map_or_else(|| "PUBLIC_URL".to_owned(), crate::redact::url)
                .trim_end_matches('/')
        )
    }

    /// `text` with `WEBHOOK_SECRET` masked (Kommo's errors may quote the address).
    pub fn scrub(&self, text: &str) -> String {
        match &self.webhook_secret {
            Some(secret) => text.replace(secret.as_str(), "***"),
            None => text.to_owned(),
        }
    }

    /// The Salesbot code that sends the reply field to the customer (one step).
    pub fn salesbot_code(field_id: u64) -> String {
        format!(
            r#"[{{"question":[{{"handler":"show","params":{{"type":"text","value":"{{{{lead.cf.{field_id}}}}}"}}}}]}}]"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_salesbot_code_prints_the_field() {
        let code = Target::salesbot_code(4439091);
        assert_eq!(
            code,
            r#"[{"question":[{"handler":"show","params":{"type":"text","value":"{{lead.cf.4439091}}"}}]}]"#
        );
        serde_json::from_str::<serde_json::Value>(&code).expect("valid JSON");
    }

    #[test]
    fn the_destination_carries_the_secret_and_the_shown_one_does_not() {
        let t = Target {
            public_url: Some("https://c.example".into()),
            webhook_secret: Some("s3cr3t-s3cr3t-s3cr3t".into()),
            ..Target::default()
        };
        assert_eq!(
            t.webhook_destination().as_deref(),
            Some("https://c.example/webhooks/kommo/s3cr3t-s3cr3t-s3cr3t")
        );
        assert!(!t.webhook_destination_shown().contains("s3cr3t"));
        assert_eq!(Target::default().webhook_destination(), None);
    }

    #[test]
    fn a_secret_with_url_characters_is_encoded_and_a_bad_public_url_gives_no_address() {
        let mut t = Target {
            public_url: Some("https://c.example".into()),
            webhook_secret: Some("a#b/c?d e%f-ç".into()),
            ..Target::default()
        };
        assert_eq!(
            t.webhook_destination().as_deref(),
            Some("https://c.example/webhooks/kommo/a%23b%2Fc%3Fd%20e%25f-%C3%A7")
        );
        for bad in [
            "not a url",
            "ftp://c.example",
            "https://c.example/?x=1",
            "https://u:p@c.example",
        ] {
            t.public_url = Some(bad.into());
            assert!(t.public_url_problem().is_some(), "{bad}");
            assert_eq!(t.webhook_destination(), None, "{bad}");
        }
    }
}
