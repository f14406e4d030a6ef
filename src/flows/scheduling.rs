//! Someone asks for a meeting with the responsible seller: the use case behind
//! `POST /agendamento/request`.
//!
//! The request names a contact, a talk or a lead (any of them); the conversation is the
//! contact's (a talk names its contact, a lead its first contact). The seller is the
//! responsible one ([`crate::flows::responsibility`]); the conversation moves to `scheduling`
//! and n8n gets `event: "scheduling"` with the seller, the contact, the lead and the recent
//! timeline. The outcome comes back through `/send-response`; a timeout hands the
//! conversation back to the bot.

use conversa_actors::{Effect, Event, Links, PhaseName, Rejection, SellerRef};
use serde_json::{Map, Value, json};

use crate::flows::FlowError;
use crate::flows::responsibility::{contact_lead, lead_contact};
use crate::sellers::{DirectoryError, FoundBy, Seller};
use crate::state::AppState;

/// A scheduling request, its ids read by the edge; `details` is passed to n8n as given.
pub struct MeetingRequest {
    pub contact_id: Option<u64>,
    pub talk_id: Option<u64>,
    pub lead_id: Option<u64>,
    pub details: Map<String, Value>,
}

/// The request was accepted: n8n is asked to schedule.
pub struct Requested {
    pub contact_id: u64,
    pub lead_id: Option<u64>,
    pub phase: PhaseName,
    pub dispatch_id: Option<String>,
    pub seller: Seller,
    pub found_by: FoundBy,
}

/// Moves the conversation to `scheduling` and asks n8n, or says why not.
pub async fn request(app: &AppState, asked: MeetingRequest) -> Result<Requested, FlowError> {
    let MeetingRequest {
        contact_id,
        talk_id,
        lead_id,
        details,
    } = asked;
    if contact_id.is_none() && talk_id.is_none() && lead_id.is_none() {
        return Err(FlowError::invalid(
            "contact_id",
            "give at least one of contact_id, talk_id, lead_id",
        ));
    }
    let contact_id = contact_of(app, contact_id, talk_id, lead_id).await?;
    let sellers = app.sellers();
    let key = app.contact(contact_id);
    let conversation = app.engine().conversation(&key).await?;
    let held_by = conversation
        .as_ref()
        .and_then(|(c, _)| c.held_or_opened_by().map(|s| s.id.clone()));
    let mut lead_id =
        lead_id.or_else(|| conversation.as_ref().and_then(|(c, _)| c.links().lead_id));
    if let (None, Some(talk)) = (lead_id, talk_id) {
        lead_id = sellers.talk_lead(talk).await?;
    }
    if lead_id.is_none() {
        lead_id = contact_lead(app, contact_id).await?;
    }
    // Without Kommo nothing more can be found: no seller, not a passing outage.
    let found = match sellers
        .responsible(talk_id, Some(contact_id), lead_id, held_by.as_deref())
        .await
    {
        Err(DirectoryError::NotConfigured) => None,
        other => other?,
    };
    let Some((seller, found_by)) = found else {
        return Err(FlowError::Unprocessable {
            field: None,
            code: "no_seller",
            message: format!(
                "no seller is responsible for contact {contact_id}: none holds or opened its \
                 conversation, and neither the contact nor the lead has a responsible Kommo user \
                 who is a seller"
            ),
        });
    };
    if lead_id.is_some() || talk_id.is_some() {
        let links = Links {
            lead_id,
            talk_id,
            chat_id: None,
        };
        app.engine().apply(key, Event::LinksSeen(links)).await?;
    }
    let mut request = details;
    request.insert("contact_id".into(), json!(contact_id));
    request.insert("lead_id".into(), json!(lead_id));
    request.insert("seller".into(), json!(seller));
    let event = Event::SchedulingRequest {
        seller: Some(SellerRef {
            id: seller.id.clone(),
            name: seller.name.clone(),
        }),
        request: Value::Object(request),
    };
    let applied = app.engine().apply(key, event).await?;
    let outcome = applied.outcome.map_err(|r| {
        let code = match r {
            Rejection::HumanAssigned => "human_assigned",
            Rejection::Paused => "paused",
            _ => "already_scheduling",
        };
        FlowError::Conflict {
            code,
            message: r.to_string(),
            holder: None,
        }
    })?;
    let dispatch_id = outcome.effects.iter().find_map(|e| match e {
        Effect::Dispatch(d) => Some(d.dispatch_id.clone()),
        _ => None,
    });
    Ok(Requested {
        contact_id,
        lead_id,
        phase: applied.phase.kind(),
        dispatch_id,
        seller,
        found_by,
    })
}

/// The contact the request is about: the one given (a talk of another contact is a mistake,
/// not a link to record), else the talk's, else the lead's first contact.
async fn contact_of(
    app: &AppState,
    contact_id: Option<u64>,
    talk_id: Option<u64>,
    lead_id: Option<u64>,
) -> Result<u64, FlowError> {
    let sellers = app.sellers();
    // A talk of another contact is a mistake, not a link to record.
    if let (Some(contact), Some(talk)) = (contact_id, talk_id) {
        match sellers.talk_contact(talk).await {
            Ok(Some(of_talk)) if of_talk != contact => {
                return Err(FlowError::unprocessable(
                    "talk_id",
                    "unprocessable",
                    format!("talk {talk} belongs to contact {of_talk}, not {contact}"),
                ));
            }
            Ok(_) | Err(DirectoryError::NotConfigured) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let contact_id = match (contact_id, talk_id) {
        (Some(c), _) => Some(c),
        (None, Some(t)) => sellers.talk_contact(t).await?,
        (None, None) => None,
    };
    match (contact_id, lead_id) {
        (Some(c), _) => Ok(c),
        (None, Some(lead)) => lead_contact(app, lead).await?.ok_or_else(|| {
            FlowError::unprocessable(
                "lead_id",
                "unprocessable",
                format!("lead {lead} has no contact to schedule with"),
            )
        }),
        (None, None) => Err(FlowError::unprocessable(
            "talk_id",
            "unprocessable",
            "the talk's contact could not be found",
        )),
    }
}
