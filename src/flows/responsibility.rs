//! Who is responsible for a talk, a contact or a lead, and the contact ↔ lead links asked of
//! Kommo on the way.
//!
//! The order (the original system's): the seller holding the contact's conversation (or who
//! opened it proactively), then the contact's assignment or responsible Kommo user, then the
//! lead's responsible Kommo user — [`SellerDirectory::responsible`](crate::sellers::SellerDirectory::responsible)
//! walks it; this file finds what it needs from the conversation and Kommo first.

use crate::flows::FlowError;
use crate::sellers::{FoundBy, Seller};
use crate::state::AppState;

/// A responsible seller and how it was found.
pub type Responsible = (Seller, FoundBy);

/// The seller id the contact's conversation holds (or was opened by), and the lead it is
/// linked to.
pub async fn conversation_hints(
    app: &AppState,
    contact_id: u64,
) -> Result<(Option<String>, Option<u64>), FlowError> {
    Ok(
        match app.engine().conversation(&app.contact(contact_id)).await? {
            Some((c, _)) => (
                c.held_or_opened_by().map(|s| s.id.clone()),
                c.links().lead_id,
            ),
            None => (None, None),
        },
    )
}

/// The seller responsible for a Kommo talk (its contact's conversation first).
pub async fn for_talk(app: &AppState, talk_id: u64) -> Result<Responsible, FlowError> {
    let dir = app.sellers();
    let contact_id = dir
        .talk_contact(talk_id)
        .await?
        .ok_or_else(|| FlowError::NotFound(format!("talk {talk_id} not found in Kommo")))?;
    let (assigned, lead_id) = conversation_hints(app, contact_id).await?;
    let hit = dir
        .responsible(
            Some(talk_id),
            Some(contact_id),
            lead_id,
            assigned.as_deref(),
        )
        .await?;
    found(hit, format!("talk {talk_id}"))
}

/// The seller responsible for a contact.
pub async fn for_contact(app: &AppState, contact_id: u64) -> Result<Responsible, FlowError> {
    let (assigned, lead_id) = conversation_hints(app, contact_id).await?;
    let hit = app
        .sellers()
        .responsible(None, Some(contact_id), lead_id, assigned.as_deref())
        .await?;
    found(hit, format!("contact {contact_id}"))
}

/// The seller responsible for a lead (its contact's conversation first).
pub async fn for_lead(app: &AppState, lead_id: u64) -> Result<Responsible, FlowError> {
    let contact_id = lead_contact(app, lead_id).await?;
    let assigned = match contact_id {
        Some(contact) => conversation_hints(app, contact).await?.0,
        None => None,
    };
    let hit = app
        .sellers()
        .responsible(None, contact_id, Some(lead_id), assigned.as_deref())
        .await?;
    found(hit, format!("lead {lead_id}"))
}

fn found(hit: Option<Responsible>, what: String) -> Result<Responsible, FlowError> {
    hit.ok_or_else(|| FlowError::NotFound(format!("no seller found for {what}")))
}

/// The lead a contact's conversation is on: its link, else the highest lead id (the most
/// recently created) Kommo lists for the contact (`GET /api/v4/contacts/{id}?with=leads`).
/// `None`: no lead anywhere, or no Kommo to ask.
pub async fn contact_lead(app: &AppState, contact_id: u64) -> Result<Option<u64>, FlowError> {
    if let Some((c, _)) = app.engine().conversation(&app.contact(contact_id)).await?
        && let Some(lead) = c.links().lead_id
    {
        return Ok(Some(lead));
    }
    let Some(kommo) = app.kommo() else {
        return Ok(None);
    };
    let contact = kommo
        .contact(contact_id)
        .await
        .map_err(|e| FlowError::KommoUnavailable(e.to_string()))?;
    Ok(contact.and_then(|c| c.lead_ids.iter().copied().max()))
}

/// The first contact of a lead, asked of Kommo (`None` without a Kommo connection).
pub async fn lead_contact(app: &AppState, lead_id: u64) -> Result<Option<u64>, FlowError> {
    let Some(kommo) = app.kommo() else {
        return Ok(None);
    };
    let lead = kommo
        .lead(lead_id, true)
        .await
        .map_err(|e| FlowError::KommoUnavailable(e.to_string()))?;
    Ok(lead.and_then(|l| l.contact_ids.first().copied()))
}
