//! The timer service: wakes contacts when their persisted timers come due.
//!
//! Timers live in two places. The truth is in each snapshot and, for finding them without a
//! scan, in the store's wake index. This service keeps an in-memory heap of the wake times it
//! has been told about (by actors as they write, and by a periodic sweep of the index, which
//! also serves as start-up recovery and picks up timers another node armed before dying). When
//! one comes due it wakes the contact, which runs whatever is due and re-arms itself.
//!
//! Only the near future is kept in memory: a wake-up more than one sweep interval away is left
//! to the index, and the sweep (which reads two intervals ahead) brings it in at least one
//! interval before it is due. So memory follows the timers about to fire, not every contact
//! with a lease, a nudge or a scheduling timeout hours away — a passivated contact costs
//! nothing here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tracing::warn;

use crate::clock::now_millis;
use crate::contact::{ContactKey, Millis};
use crate::store::Store;

/// How many index entries one sweep reads at most.
const SWEEP_BATCH: usize = 10_000;

/// What the timer service wakes (the node, `crate::node::Core`): a contact whose time came, and
/// the wake index it sweeps for timers armed on other nodes or before a restart.
pub(crate) trait WakeTarget: Send + Sync {
    fn wake(self: Arc<Self>, key: ContactKey);
    fn store(&self) -> &Arc<dyn Store>;
}

#[derive(Clone)]
pub(crate) struct TimerHandle {
    tx: mpsc::UnboundedSender<(ContactKey, Millis)>,
}

impl TimerHandle {
    /// Wakes `key` at `at` (replacing what this node knew for it).
    pub fn arm(&self, key: ContactKey, at: Millis) {
        let _ = self.tx.send((key, at));
    }
}

pub(crate) fn channel() -> (TimerHandle, mpsc::UnboundedReceiver<(ContactKey, Millis)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (TimerHandle { tx }, rx)
}

/// Runs until the engine is dropped.
pub(crate) async fn run(
    core: Weak<dyn WakeTarget>,
    mut rx: mpsc::UnboundedReceiver<(ContactKey, Millis)>,
    sweep_every: Duration,
) {
    let mut heap: BinaryHeap<Reverse<(Millis, ContactKey)>> = BinaryHeap::new();
    let mut armed: HashMap<ContactKey, Millis> = HashMap::new();
    let mut next_sweep = Instant::now();
    loop {
        let now = now_millis();
        // Fire everything due.
        while let Some(Reverse((at, key))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            if armed.get(&key) == Some(&at) {
                armed.remove(&key);
                let Some(core) = core.upgrade() else { return };
                core.wake(key);
            }
        }
        if Instant::now() >= next_sweep {
            let Some(c) = core.upgrade() else { return };
            let horizon = now + 2 * sweep_every.as_millis() as Millis;
            match c.store().due(horizon, SWEEP_BATCH).await {
                Ok(due) => {
                    for (key, at) in due {
                        arm(&mut heap, &mut armed, key, at, true);
                    }
                }
                Err(e) => warn!(error = %e, "timer sweep could not read the wake index"),
            }
            drop(c);
            next_sweep = Instant::now() + sweep_every;
            continue;
        }
        let next_fire = heap.peek().map(|Reverse((at, _))| {
            Instant::now() + Duration::from_millis(at.saturating_sub(now_millis()))
        });
        let deadline = next_fire.map_or(next_sweep, |f| f.min(next_sweep));
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((key, at)) => {
                    let near = now_millis() + sweep_every.as_millis() as Millis;
                    arm_near(&mut heap, &mut armed, key, at, near);
                    while let Ok((key, at)) = rx.try_recv() {
                        arm_near(&mut heap, &mut armed, key, at, near);
                    }
                }
                None => return,
            },
            _ = sleep_until(deadline) => {}
        }
    }
}

/// An actor's arming: kept if due before `near`, else left to the sweep (and whatever this
/// node knew for the contact is forgotten: the actor's arming replaces it).
fn arm_near(
    heap: &mut BinaryHeap<Reverse<(Millis, ContactKey)>>,
    armed: &mut HashMap<ContactKey, Millis>,
    key: ContactKey,
    at: Millis,
    near: Millis,
) {
    if at > near {
        armed.remove(&key);
        return;
    }
    arm(heap, armed, key, at, false);
}

/// An actor's own arming is exact and replaces; a sweep only ever brings a wake-up earlier.
fn arm(
    heap: &mut BinaryHeap<Reverse<(Millis, ContactKey)>>,
    armed: &mut HashMap<ContactKey, Millis>,
    key: ContactKey,
    at: Millis,
    from_sweep: bool,
) {
    if let Some(current) = armed.get(&key)
        && (*current == at || (from_sweep && *current <= at))
    {
        return;
    }
    armed.insert(key, at);
    heap.push(Reverse((at, key)));
    // Stale heap entries are skipped when popped; compact when they dominate.
    if heap.len() > 1024 && heap.len() > armed.len() * 4 {
        *heap = armed.iter().map(|(k, at)| Reverse((*at, *k))).collect();
    }
}
