//! An operator acts on a dead letter ([`crate::dead_letters`]): replays it — its conversation
//! runs the effect again under a new id, fenced like any effect (never a bot reply into a
//! conversation a seller holds) — or drops it.

use conversa_actors::{ContactKey, Event, Rejection};

use crate::dead_letters::DeadLetter;
use crate::flows::FlowError;
use crate::state::AppState;

/// A dead letter run again.
#[derive(Debug)]
pub struct Replayed {
    pub id: String,
    /// The new outbox id (a dispatch's new `dispatch_id`: a new idempotency key).
    pub replayed_as: String,
    pub contact_id: u64,
}

/// The conversation an effect's id belongs to: outbox ids are
/// `<account>-<contact>-<sequence>[kind letter]`.
pub fn contact_of(id: &str) -> Option<ContactKey> {
    let mut parts = id.splitn(3, '-');
    let account = parts.next()?.parse().ok()?;
    let contact = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    rest.starts_with(|c: char| c.is_ascii_digit())
        .then(|| ContactKey::new(account, contact))
}

fn not_kept(id: &str) -> FlowError {
    FlowError::NotFound(format!(
        "no dead letter {id:?} is kept: replayed or dropped already, pushed out by newer ones, or never there"
    ))
}

/// Runs the dead-lettered effect `id` again; `by` says who asked (kept in the timeline).
pub async fn replay(app: &AppState, id: &str, by: &str) -> Result<Replayed, FlowError> {
    let list = &app.0.dead_letters;
    if list.get(id).await?.is_some_and(|d| d.is_webhook_item()) {
        return Err(FlowError::Conflict {
            code: "not_replayable",
            message: "a webhook item that could not be read has nothing valid to apply: fix the sender, then drop it".into(),
            holder: None,
        });
    }
    let key = contact_of(id).ok_or_else(|| not_kept(id))?;
    let event = Event::Replay {
        id: id.to_owned(),
        by: by.to_owned(),
    };
    let applied = app.engine().apply(key, event).await?;
    match applied.outcome {
        Ok(outcome) => {
            list.remove(id).await?;
            metrics::counter!("conversa_dead_letters_replayed_total").increment(1);
            Ok(Replayed {
                id: id.to_owned(),
                replayed_as: outcome.queued.last().cloned().unwrap_or_default(),
                contact_id: key.contact_id,
            })
        }
        Err(Rejection::NoSuchDeadLetter) => {
            list.remove(id).await?;
            Err(not_kept(id))
        }
        Err(Rejection::HeldBy(holder)) => Err(FlowError::Conflict {
            code: "held_by_seller",
            message: format!(
                "{} ({}) holds the conversation: nothing the bot says is replayed into it; release it first or drop the dead letter",
                holder.name, holder.id
            ),
            holder: Some(holder),
        }),
        Err(Rejection::Paused) => Err(FlowError::Conflict {
            code: "paused",
            message:
                "the bot is paused for this conversation: resume it first or drop the dead letter"
                    .into(),
            holder: None,
        }),
        Err(other) => Err(FlowError::Conflict {
            code: "not_replayable",
            message: other.to_string(),
            holder: None,
        }),
    }
}

/// Gives up on the dead letter `id` for good.
pub async fn drop(app: &AppState, id: &str, by: &str) -> Result<DeadLetter, FlowError> {
    let list = &app.0.dead_letters;
    let record = list.get(id).await?;
    if let Some(r) = record.as_ref().filter(|r| r.is_webhook_item()) {
        list.remove(id).await?;
        return Ok(r.clone());
    }
    let key = contact_of(id).ok_or_else(|| not_kept(id))?;
    let event = Event::DropDeadLetter {
        id: id.to_owned(),
        by: by.to_owned(),
    };
    let applied = app.engine().apply(key, event).await?;
    let listed = list.remove(id).await?;
    match (applied.outcome, record) {
        (Ok(_), Some(r)) => Ok(r),
        (Ok(_), None) => Ok(DeadLetter {
            id: id.to_owned(),
            at: conversa_actors::clock::now_millis(),
            kind: "effect".into(),
            contact_id: Some(key.contact_id),
            key: id.to_owned(),
            error: String::new(),
        }),
        // Listed, but its conversation no longer keeps it: the listing is gone now too.
        (Err(_), Some(r)) if listed => Ok(r),
        (Err(_), _) => Err(not_kept(id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_effect_id_names_its_conversation() {
        assert_eq!(
            contact_of("33981183-1298200-4"),
            Some(ContactKey::new(33981183, 1298200))
        );
        assert_eq!(contact_of("0-7-12r"), Some(ContactKey::new(0, 7)));
        assert_eq!(contact_of("w1767225603000-0"), None);
        assert_eq!(contact_of("1-2-x"), None);
        assert_eq!(contact_of("1-2"), None);
    }
}
