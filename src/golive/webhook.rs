//! The webhook Kommo must call, `PUBLIC_URL/webhooks/kommo/<WEBHOOK_SECRET>`: how it stands in
//! the account, and putting it right. One definition for `setup kommo` (once, by hand), the
//! checks (`check`, `/ready`) and the watchdog (every `WEBHOOK_WATCH_SECS`).

use std::collections::BTreeSet;

use super::target::WEBHOOK_EVENTS;
use crate::kommo::admin::Subscription;
use crate::kommo::client::KommoClient;
use crate::kommo::error::KommoError;

/// How the hook stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Registered, enabled, with every event of [`WEBHOOK_EVENTS`].
    Right(Subscription),
    /// No hook with this address: Kommo sends conversa nothing.
    Missing,
    /// Kommo switched it off (more than 100 invalid answers in 2 hours).
    Disabled(Subscription),
    /// Registered and enabled, without these events.
    Incomplete(Subscription, Vec<&'static str>),
}

impl Standing {
    /// A word for logs and metrics labels (a closed set).
    pub fn label(&self) -> &'static str {
        match self {
            Standing::Right(_) => "ok",
            Standing::Missing => "missing",
            Standing::Disabled(_) => "disabled",
            Standing::Incomplete(..) => "missing_events",
        }
    }

    fn existing(&self) -> Option<&Subscription> {
        match self {
            Standing::Right(h) | Standing::Disabled(h) | Standing::Incomplete(h, _) => Some(h),
            Standing::Missing => None,
        }
    }
}

/// Reads the account's hook for `destination`.
pub async fn standing(kommo: &KommoClient, destination: &str) -> Result<Standing, KommoError> {
    let hook = kommo
        .webhooks(Some(destination))
        .await?
        .into_iter()
        .find(|h| h.destination == destination);
    Ok(match hook {
        None => Standing::Missing,
        Some(h) if h.disabled => Standing::Disabled(h),
        Some(h) => {
            let missing: Vec<&'static str> = WEBHOOK_EVENTS
                .iter()
                .copied()
                .filter(|e| !h.settings.iter().any(|s| s == e))
                .collect();
            if missing.is_empty() {
                Standing::Right(h)
            } else {
                Standing::Incomplete(h, missing)
            }
        }
    })
}

/// Puts a hook that is not [`Standing::Right`] right: registers a missing one, completes its
/// events (keeping those an admin added), and re-enables a disabled one by removing and
/// registering it again (the API has no "enable"). Reads it back: `Ok` only when Kommo lists
/// it enabled with every event.
pub async fn repair(
    kommo: &KommoClient,
    destination: &str,
    from: &Standing,
) -> Result<Subscription, KommoError> {
    let mut events: BTreeSet<String> = WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect();
    if let Some(existing) = from.existing() {
        events.extend(existing.settings.iter().cloned());
    }
    if matches!(from, Standing::Disabled(_)) {
        kommo.unsubscribe_webhook(destination).await?;
    }
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    kommo.subscribe_webhook(destination, &events).await?;
    match standing(kommo, destination).await? {
        Standing::Right(hook) => Ok(hook),
        other => Err(KommoError::Decode(format!(
            "Kommo accepted the webhook but lists it {}",
            other.label()
        ))),
    }
}

/// What [`repair`] would do, in words (`shown` is the address with the secret masked).
pub fn plan(from: &Standing, shown: &str) -> String {
    match from {
        Standing::Right(_) => format!("nothing: {shown} is right"),
        Standing::Missing => format!("register {shown} for {}", WEBHOOK_EVENTS.join(", ")),
        Standing::Disabled(_) => {
            format!("re-enable {shown} (Kommo disabled it): remove it and register it again")
        }
        Standing::Incomplete(_, missing) => {
            format!("add events {} to {shown}", missing.join(", "))
        }
    }
}
