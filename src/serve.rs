//! The listener: accepts TCP connections and serves HTTP/1.1 on them, so that no client can hold
//! the service hostage.
//!
//! `axum::serve` has no header-read timeout, no idle timeout and no connection cap: 600 silent
//! connections once exhausted the open files and `/health` stopped answering. Here:
//!
//! * **Header-read timeout** (`HEADER_READ_TIMEOUT_SECS`, 10 s): hyper's own timer, armed
//!   whenever a connection waits for a request head — a new connection that sends nothing, a
//!   slowloris trickling header bytes, and a keep-alive connection idle between two requests are
//!   all closed when it runs out. A slow *body* is bounded by the request timeout (408).
//! * **A connection cap** (`MAX_CONNECTIONS`, 4096). At the cap, a new connection takes the
//!   place of the oldest one that has no request in flight (silent since it connected, or idle
//!   between requests): one client holding thousands of idle sockets cannot lock the others
//!   out. Only when every connection is in the middle of a request is the new one answered at
//!   once with `503 {"error": "too_many_connections"}` and closed, so the kernel's backlog never
//!   fills with connections nobody will read.
//! * **Open files**: the soft `RLIMIT_NOFILE` is raised to the hard limit at start (the `rlimit`
//!   crate); when even that cannot hold the cap, the cap is lowered to fit and a WARN says so.
//! * **Accept errors** (out of files, …) never end the loop: it logs, waits a moment, goes on.
//! * **Graceful shutdown**: on the signal, accepting stops and every connection finishes its
//!   request in flight (at most `drain`), then closes.
//!
//! HTTP/2 is not served: Kommo and n8n call with HTTP/1.1, and a TLS proxy in front speaks
//! HTTP/1.1 to its upstream.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// How the listener treats connections.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once; beyond it: an immediate 503 and close.
    pub max_connections: usize,
    /// The longest the server waits for a complete request head (also the idle keep-alive
    /// time between two requests).
    pub header_read_timeout: Duration,
    /// How long a shutdown waits for requests in flight.
    pub drain: Duration,
}

/// File descriptors kept for everything that is not a client connection (Redis, n8n, Kommo,
/// the embedded store, logs).
const RESERVED_FILES: u64 = 256;
/// Refusals (503 over the cap) being written at once; beyond it a connection is just closed.
const MAX_REFUSALS: usize = 64;
/// How long a newcomer waits for the slot of the idle connection let go for it.
const EVICTION_WAIT: Duration = Duration::from_millis(200);
/// The largest request head accepted (hyper answers 431 beyond it).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The 503 written to a connection over the cap, before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 83\r\n\
\r\n\
{\"error\":\"too_many_connections\",\"message\":\"too many open connections, retry later\"}";

/// Raises the soft open-file limit to the hard one and returns the connection cap that fits in
/// it (`wanted`, or fewer when the OS does not allow enough files).
pub fn fit_open_files(wanted: usize) -> usize {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-file limit");
            return wanted;
        }
    };
    let room = limit.saturating_sub(RESERVED_FILES) as usize;
    if room < wanted {
        warn!(
            open_files = limit,
            max_connections = room.max(1),
            wanted,
            "the open-file limit holds fewer connections than MAX_CONNECTIONS: the cap is lowered to fit (raise `ulimit -n` or LimitNOFILE)"
        );
        room.max(1)
    } else {
        info!(
            open_files = limit,
            max_connections = wanted,
            "connection cap"
        );
        wanted
    }
}

/// One open connection, as the cap sees it.
struct Open {
    /// Requests being answered on it now; 0 = it may be let go for a newcomer.
    busy: Arc<AtomicUsize>,
    /// Closes it.
    kick: Arc<Notify>,
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Connections(Mutex<BTreeMap<u64, Open>>);

impl Connections {
    /// Closes the oldest connection with no request in flight; whether there was one.
    fn evict_oldest_idle(&self) -> bool {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = open
            .iter()
            .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .map(|(id, _)| *id);
        match idle.and_then(|id| open.remove(&id)) {
            Some(c) => {
                c.kick.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Counts a request as in flight on its connection until it is answered (or dropped).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(busy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let open = Arc::new(Connections::default());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    tokio::pin!(shutdown);
    let mut next_id = 0u64;
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE/ENFILE and the like: the connection stays in the backlog; try
                    // again shortly instead of spinning or stopping.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // At the cap: make room by letting the oldest idle connection go.
            Err(_) if open.evict_oldest_idle() => {
                metrics::counter!("conversa_http_connections_evicted_total").increment(1);
                match tokio::time::timeout(EVICTION_WAIT, slots.clone().acquire_owned()).await {
                    Ok(Ok(slot)) => slot,
                    _ => {
                        refuse(stream, &refusals);
                        continue;
                    }
                }
            }
            Err(_) => {
                refuse(stream, &refusals);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let busy = Arc::new(AtomicUsize::new(0));
        let kick = Arc::new(Notify::new());
        open.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                Open {
                    busy: busy.clone(),
                    kick: kick.clone(),
                },
            );
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: axum::http::Request<Incoming>| req.map(axum::body::Body::new))
                .map_future(move |answer| {
                    let in_flight = InFlight::new(&busy);
                    async move {
                        let answer = answer.await;
                        drop(in_flight);
                        answer
                    }
                }),
        );
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        let open = open.clone();
        tokio::spawn(async move {
            tokio::select! {
                done = connection => if let Err(e) = done {
                    debug!(error = %e, "connection closed with an error");
                },
                () = kick.notified() => debug!("idle connection let go for a newcomer"),
            }
            open.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {},
        () = tokio::time::sleep(limits.drain) => {
            warn!("shutdown: connections still open after the drain time are dropped");
        }
    }
}

/// Answers a connection over the cap with a 503 and closes it; when even the refusals are at
/// their bound, just closes it.
fn refuse(mut stream: TcpStream, refusals: &Arc<Semaphore>) {
    metrics::counter!("conversa_http_connections_refused_total").increment(1);
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(OVER_CAPACITY).await;
            let _ = stream.shutdown().await;
        })
        .await;
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(OVER_CAPACITY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
    }
}
