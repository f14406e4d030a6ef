//! The Kommo REST endpoints conversa uses: the few v4 (and one v2) calls — users, leads,
//! contacts, talks and the account read; notes added; lead fields and tags patched; Salesbots
//! started (`/api/v2/salesbot/run`, the only way to put a reply into a Kommo-managed WhatsApp
//! conversation, docs/kommo.md). Each one builds its request and reads the answer; how the
//! request goes out (rate limit, 429 backoff, 403 circuit, 401 refresh) is `transport.rs`.

use reqwest::{Method, Url};
use serde_json::json;
use tracing::warn;

use super::error::KommoError;
use super::transport::Request;
use super::wire::{
    NotesResponse, UsersPage, contact_from, decode, lead_from, talk_from, user_from,
};
use conversa_actors::Commitment;

pub use super::model::{Account, Contact, KommoUser, Lead, LeadPatch, Talk};
pub use super::transport::{
    DEFAULT_BLOCK_COOLDOWN, KommoClient, KommoSettings, LIMITER_MARGIN, MAX_RPS, http_client,
};

/// Safety stop for the users listing (100 000 users): Kommo blocks "unbounded iteration".
const MAX_USER_PAGES: u32 = 400;

impl KommoClient {
    /// Every user, all pages (`limit=250`, with phone number and amojo id).
    pub async fn users(&self) -> Result<Vec<KommoUser>, KommoError> {
        let mut out = Vec::new();
        let mut page = 1u32;
        loop {
            if page > MAX_USER_PAGES {
                warn!(
                    pages = MAX_USER_PAGES,
                    "stopping the Kommo users listing: too many pages"
                );
                break;
            }
            let mut url = self.v4("users")?;
            url.query_pairs_mut()
                .append_pair("page", &page.to_string())
                .append_pair("limit", "250")
                .append_pair("with", "phone_number,amojo_id");
            let Some(body) = self.get(url).await? else {
                break;
            };
            let parsed: UsersPage = decode("users page", &body)?;
            out.extend(
                parsed
                    .embedded
                    .map(|e| e.users)
                    .unwrap_or_default()
                    .into_iter()
                    .map(user_from),
            );
            // Follow `_links.next`: its `page` (never its host: the href may name another
            // domain of the same account), or the next number.
            let Some(next) = parsed.links.next else { break };
            page = Url::parse(&next.href)
                .ok()
                .and_then(|u| {
                    u.query_pairs()
                        .find(|(k, _)| k == "page")
                        .and_then(|(_, v)| v.parse::<u32>().ok())
                })
                .filter(|n| *n > page)
                .unwrap_or(page + 1);
        }
        Ok(out)
    }

    /// One lead (`with=contacts` when asked); `None` when Kommo answers 204.
    pub async fn lead(&self, id: u64, with_contacts: bool) -> Result<Option<Lead>, KommoError> {
        let mut url = self.v4(&format!("leads/{id}"))?;
        if with_contacts {
            url.query_pairs_mut().append_pair("with", "contacts");
        }
        match self.get(url).await? {
            None => Ok(None),
            Some(body) => Ok(Some(lead_from(decode("lead", &body)?))),
        }
    }

    /// One contact with its phones and leads (`with=leads`); `None` when Kommo answers 204.
    pub async fn contact(&self, id: u64) -> Result<Option<Contact>, KommoError> {
        let mut url = self.v4(&format!("contacts/{id}"))?;
        url.query_pairs_mut().append_pair("with", "leads");
        match self.get(url).await? {
            None => Ok(None),
            Some(body) => Ok(Some(contact_from(decode("contact", &body)?))),
        }
    }

    /// One talk; `None` when Kommo answers 204 or 404 (the talks API documents 404).
    pub async fn talk(&self, id: u64) -> Result<Option<Talk>, KommoError> {
        let url = self.v4(&format!("talks/{id}"))?;
        match self.get(url).await {
            Ok(None) | Err(KommoError::Api { status: 404, .. }) => Ok(None),
            Ok(Some(body)) => Ok(Some(talk_from(decode("talk", &body)?))),
            Err(e) => Err(e),
        }
    }

    /// Adds a common (text) note to a lead and returns the note id.
    pub async fn add_note(&self, lead_id: u64, text: &str) -> Result<u64, KommoError> {
        let url = self.v4(&format!("leads/{lead_id}/notes"))?;
        let body = json!([{ "note_type": "common", "params": { "text": text } }]);
        let answer = self.send(Method::POST, url, Some(body)).await?;
        let parsed: NotesResponse = decode("notes response", &answer.body)?;
        parsed
            .embedded
            .notes
            .first()
            .map(|n| n.id)
            .ok_or_else(|| KommoError::Decode("notes response without a note".into()))
    }

    /// Sets custom fields and adds/removes tags on a lead.
    pub async fn patch_lead(&self, lead_id: u64, patch: &LeadPatch) -> Result<(), KommoError> {
        let url = self.v4(&format!("leads/{lead_id}"))?;
        self.send(Method::PATCH, url, Some(patch.body())).await?;
        Ok(())
    }

    /// Starts Salesbot `bot_id` on a lead (`POST /api/v2/salesbot/run`, 202). A 5xx or a
    /// timeout leaves it unknown whether the bot ran: not retried here (see the module docs).
    /// `in_doubt` is marked whenever a run request is out and cleared when Kommo's answer
    /// proves the bot did not run (429, 401), so a caller that gives up midway (a timeout)
    /// knows whether trying again could run the bot twice.
    pub async fn run_salesbot(
        &self,
        bot_id: u64,
        lead_id: u64,
        in_doubt: &Commitment,
    ) -> Result<(), KommoError> {
        let url = self
            .inner
            .base
            .join("api/v2/salesbot/run")
            .map_err(|e| KommoError::Config(e.to_string()))?;
        let body = json!([{ "bot_id": bot_id, "entity_id": lead_id, "entity_type": 2 }]);
        let request = Request {
            method: Method::POST,
            url,
            body: Some(body),
            in_doubt: Some(in_doubt.clone()),
        };
        self.send_request(request).await?;
        Ok(())
    }

    /// The account this client talks to.
    pub async fn account(&self) -> Result<Account, KommoError> {
        let url = self.v4("account")?;
        match self.get(url).await? {
            Some(body) => decode("account", &body),
            None => Err(KommoError::Decode("account: empty answer".into())),
        }
    }
}
