//! The supervisor of all contact actors.
//!
//! A contact actor that panics (or returns an error) is reported here: its slot is closed and
//! removed, so the next message activates a fresh actor from the last durable snapshot, and the
//! contact is woken at once so its timers and outbox carry on. Other contacts never notice.

use std::sync::Weak;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tracing::error;

use crate::node::Core;

pub(crate) struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = Weak<Core>;
    type Arguments = Weak<Core>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        core: Weak<Core>,
    ) -> Result<Weak<Core>, ActorProcessingErr> {
        Ok(core)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        core: &mut Weak<Core>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(core) = core.upgrade() else {
            return Ok(());
        };
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some((_, (key, slot))) = core.by_actor.remove(&cell.get_id()) {
                    error!(contact = %key, error = %err, "contact actor failed; restarting from its snapshot");
                    core.stats.restart();
                    slot.mark_stopped();
                    core.forget(&key, &slot);
                    core.wake(key);
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some((_, (key, slot))) = core.by_actor.remove(&cell.get_id()) {
                    slot.mark_stopped();
                    core.forget(&key, &slot);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
