//! The one error type of the Kommo client and the OAuth token manager.
//!
//! # Why one enum, classified by what the caller can do
//!
//! Callers (the outbox executors, the HTTP handlers, `/health`) do not care which HTTP status
//! Kommo used; they need to know whether trying again later can help, and whether an operator
//! must act. Each variant therefore names a *situation* (network trouble, a Kommo outage, a
//! rejected request with its validation errors, a blocked account, an authorization that must be
//! redone), and [`KommoError::is_retryable`] gives the retry verdict in one place.
//!
//! Retry policy, in short:
//!
//! | variant | retryable | why |
//! |---|---|---|
//! | [`Network`](KommoError::Network) | yes | connection refused/reset, timeout: transient by nature. A timeout on a POST leaves the outcome unknown: the caller must use its idempotency rules (see `run_salesbot`). |
//! | [`Server`](KommoError::Server) | yes | Kommo 5xx. The *client* never retries these itself: a 5xx on `salesbot/run` may come after the bot already ran, and a blind retry would send the customer a second WhatsApp message. The caller (outbox) decides. |
//! | [`RateLimited`](KommoError::RateLimited) | yes | 429 that survived the client's own backoff: try again later. |
//! | [`Blocked`](KommoError::Blocked) | **yes** | 403 HTML (account/IP blocked). Retrying *now* is forbidden (the circuit fails fast so no retry storm reaches Kommo), but the work is not invalid: the outbox should keep it and retry after [`KommoError::retry_after`]. Dead-lettering it would lose every message sent while support lifts the block. |
//! | [`TokenStore`](KommoError::TokenStore) | yes | rotated tokens could not be persisted yet; a background task keeps trying. |
//! | [`Api`](KommoError::Api) | no | a 4xx with a problem+json body: the same request will be rejected again. |
//! | [`ReauthorizeNeeded`](KommoError::ReauthorizeNeeded), [`NotConfigured`](KommoError::NotConfigured), [`OAuth`](KommoError::OAuth) | no | an operator must (re)install the integration or set a token. |
//! | [`Decode`](KommoError::Decode), [`Config`](KommoError::Config) | no | a bug or a misconfiguration. |

use std::time::Duration;

/// One entry of a problem+json `validation-errors[].errors[]` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ValidationError {
    /// e.g. `NotSupportedChoice`.
    pub code: String,
    /// e.g. `custom_fields_values.0.field_id`.
    pub path: String,
    pub detail: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum KommoError {
    /// Could not reach Kommo or it did not answer in time.
    #[error("network error calling Kommo: {0}")]
    Network(String),

    /// Kommo answered 5xx. Not retried by the client itself (see the module docs).
    #[error("Kommo server error {status}: {body_excerpt}")]
    Server { status: u16, body_excerpt: String },

    /// Kommo answered 429 on every attempt of the client's backoff.
    #[error("Kommo rate limit (429) on all {attempts} attempts")]
    RateLimited { attempts: u32 },

    /// A 4xx (other than 401-then-refresh, 403 block and 429) with its problem+json details.
    #[error("Kommo rejected the request ({status} {title}): {detail}")]
    Api {
        status: u16,
        title: String,
        detail: String,
        validation_errors: Vec<ValidationError>,
    },

    /// The account or our IP is blocked (HTML 403); the client's circuit is open and no call
    /// reaches Kommo until `retry_in` has passed.
    #[error("Kommo blocked this account/IP (403); no calls for {}s", retry_in.as_secs())]
    Blocked { retry_in: Duration },

    /// The refresh token was rejected (revoked, expired, already used) or a long-lived token
    /// stopped working: nothing but a new authorization (code exchange) or a new token helps.
    #[error("Kommo authorization needed: {reason}")]
    ReauthorizeNeeded { reason: String },

    /// No token at all: neither stored nor given in the environment.
    #[error("Kommo is not configured: no access token stored or given")]
    NotConfigured,

    /// The OAuth endpoint rejected an authorization code exchange (bad or expired code,
    /// wrong client credentials). `hint` is Kommo's `hint` field.
    #[error("Kommo OAuth error {status}: {hint} ({detail})")]
    OAuth {
        status: u16,
        hint: String,
        detail: String,
    },

    /// A rotated token pair could not be written to the store yet. The pair is kept in memory
    /// and a background task keeps retrying the write; it is not used until it is durable.
    #[error("could not persist rotated Kommo tokens: {0}")]
    TokenStore(String),

    /// Kommo answered 2xx with a body we cannot understand.
    #[error("unexpected Kommo response: {0}")]
    Decode(String),

    /// A setting is invalid (e.g. an unparsable API URL).
    #[error("invalid Kommo configuration: {0}")]
    Config(String),
}

impl KommoError {
    /// Whether trying the same operation again later can succeed. See the module docs for the
    /// table; notably [`KommoError::Blocked`] is retryable (later, not now) and
    /// [`KommoError::Server`] is retryable by the caller, never by the client itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            KommoError::Network(_)
            | KommoError::Server { .. }
            | KommoError::RateLimited { .. }
            | KommoError::Blocked { .. }
            | KommoError::TokenStore(_) => true,
            KommoError::Api { .. }
            | KommoError::ReauthorizeNeeded { .. }
            | KommoError::NotConfigured
            | KommoError::OAuth { .. }
            | KommoError::Decode(_)
            | KommoError::Config(_) => false,
        }
    }

    /// The earliest sensible moment to retry, when the error says so (an open circuit).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KommoError::Blocked { retry_in } => Some(*retry_in),
            _ => None,
        }
    }

    /// The HTTP status behind the error, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            KommoError::Server { status, .. }
            | KommoError::Api { status, .. }
            | KommoError::OAuth { status, .. } => Some(*status),
            KommoError::RateLimited { .. } => Some(429),
            KommoError::Blocked { .. } => Some(403),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_verdicts() {
        assert!(KommoError::Network("reset".into()).is_retryable());
        assert!(
            KommoError::Server {
                status: 502,
                body_excerpt: String::new()
            }
            .is_retryable()
        );
        assert!(KommoError::RateLimited { attempts: 5 }.is_retryable());
        let blocked = KommoError::Blocked {
            retry_in: Duration::from_secs(300),
        };
        assert!(blocked.is_retryable());
        assert_eq!(blocked.retry_after(), Some(Duration::from_secs(300)));
        assert!(
            !KommoError::Api {
                status: 400,
                title: "Bad Request".into(),
                detail: String::new(),
                validation_errors: vec![]
            }
            .is_retryable()
        );
        assert!(
            !KommoError::ReauthorizeNeeded {
                reason: "revoked".into()
            }
            .is_retryable()
        );
        assert!(!KommoError::NotConfigured.is_retryable());
    }
}
