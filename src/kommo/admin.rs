//! The account-setup endpoints (administrator rights): the account's webhooks and its lead
//! custom fields. `conversa setup kommo` uses them to make an account ready, `conversa check`
//! and `/ready` to tell whether it still is. Shapes from amoCRM's `webhooks-api` and
//! `custom-fields` pages (docs/kommo.md, *Setting up an account*).

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::KommoError;
use super::transport::KommoClient;
use super::wire::decode;

/// The most lead-field pages read (250 fields each): Kommo blocks unbounded iteration.
const MAX_FIELD_PAGES: u32 = 40;

/// One webhook of the account (`GET /api/v4/webhooks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: u64,
    pub destination: String,
    /// Kommo switches a hook off after more than 100 invalid answers in 2 hours.
    #[serde(default)]
    pub disabled: bool,
    /// The event codes it is subscribed to (`add_message`, `add_talk`, ...).
    #[serde(default)]
    pub settings: Vec<String>,
}

/// One lead custom field (`GET /api/v4/leads/custom_fields`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadField {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub code: Option<String>,
    /// `text`, `textarea`, `numeric`, ...
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Deserialize)]
struct Embedded<T> {
    #[serde(rename = "_embedded")]
    embedded: T,
}

#[derive(Deserialize)]
struct Webhooks {
    #[serde(default)]
    webhooks: Vec<Subscription>,
}

#[derive(Deserialize)]
struct Fields {
    #[serde(default)]
    custom_fields: Vec<LeadField>,
}

#[derive(Deserialize, Default)]
struct PageLinks {
    #[serde(rename = "_links", default)]
    links: Option<Next>,
}

#[derive(Deserialize, Default)]
struct Next {
    #[serde(default)]
    next: Option<serde_json::Value>,
}

impl KommoClient {
    /// The account's webhooks; with `destination`, only the one with exactly that address.
    pub async fn webhooks(
        &self,
        destination: Option<&str>,
    ) -> Result<Vec<Subscription>, KommoError> {
        let mut url = self.v4("webhooks")?;
        if let Some(destination) = destination {
            url.query_pairs_mut()
                .append_pair("filter[destination]", destination);
        }
        match self.get(url).await? {
            None => Ok(Vec::new()),
            Some(body) => Ok(decode::<Embedded<Webhooks>>("webhooks", &body)?
                .embedded
                .webhooks),
        }
    }

    /// Subscribes `destination` to `events`; an existing hook with that address is updated.
    pub async fn subscribe_webhook(
        &self,
        destination: &str,
        events: &[&str],
    ) -> Result<Subscription, KommoError> {
        let url = self.v4("webhooks")?;
        let body = json!({ "destination": destination, "settings": events });
        let answer = self.send(Method::POST, url, Some(body)).await?;
        decode("webhook", &answer.body)
    }

    /// Removes the hook with this address (a disabled hook is switched on again by removing
    /// and subscribing it anew: the API has no "enable").
    pub async fn unsubscribe_webhook(&self, destination: &str) -> Result<(), KommoError> {
        let url = self.v4("webhooks")?;
        let body = json!({ "destination": destination });
        self.send(Method::DELETE, url, Some(body)).await?;
        Ok(())
    }

    /// Every lead custom field, all pages.
    pub async fn lead_fields(&self) -> Result<Vec<LeadField>, KommoError> {
        let mut out = Vec::new();
        for page in 1..=MAX_FIELD_PAGES {
            let mut url = self.v4("leads/custom_fields")?;
            url.query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("limit", "250");
            let Some(body) = self.get(url).await? else {
                break;
            };
            let fields: Embedded<Fields> = decode("lead custom fields", &body)?;
            out.extend(fields.embedded.custom_fields);
            let links: PageLinks = decode("lead custom fields", &body)?;
            if links.links.and_then(|l| l.next).is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Creates a lead custom field of `kind` (`textarea` for long texts).
    pub async fn create_lead_field(
        &self,
        name: &str,
        code: &str,
        kind: &str,
    ) -> Result<LeadField, KommoError> {
        let url = self.v4("leads/custom_fields")?;
        let body = json!([{ "name": name, "code": code, "type": kind }]);
        let answer = self.send(Method::POST, url, Some(body)).await?;
        decode::<Embedded<Fields>>("created lead field", &answer.body)?
            .embedded
            .custom_fields
            .into_iter()
            .next()
            .ok_or_else(|| KommoError::Decode("created lead field: empty answer".into()))
    }
}
