//! The connection to Redis, one server or a Cluster, behind one call that bounds every round trip
//! and maps its errors.
//!
//! * **One server** (`REDIS_URL`): a [`ConnectionManager`], which reconnects by itself when the
//!   connection drops (Redis restarted, connection reset). A connection that silently stops
//!   answering (a half-open TCP connection after a network partition, Redis moved to another
//!   address) is never reported dead by the operating system for many minutes, so a call that
//!   times out with nothing at all answered since it started replaces the whole manager.
//! * **Sentinel** (`REDIS_SENTINEL_URLS`, `REDIS_SENTINEL_MASTER`): the sentinels name the
//!   master; a [`ConnectionManager`] talks to it as to one server, logging in with
//!   `REDIS_SENTINEL_MASTER_PASSWORD` (and `_USERNAME`) when given ([`MasterAuth`]). When a call fails the way a
//!   failover makes calls fail (connection refused or reset, no answer, `READONLY` from a master
//!   demoted to replica), the sentinels are asked again, and a new master gets a new manager: the
//!   calls during the failover answer 503, the first after it goes to the promoted replica.
//! * **Cluster** (`REDIS_CLUSTER_URLS`): redis-rs's cluster client, which learns the slot map
//!   from the seed nodes, follows `MOVED`/`ASK` (resharding, failover) and keeps one connection per
//!   node, reconnecting and refreshing the map itself. A call that times out replaces the whole
//!   cluster connection, at most every 2 s (the client does not notice a hung master's
//!   failover, and can stay wedged after failovers under load). Every command and pipeline sent through it must touch
//!   a single slot; commands on different slots may run on different nodes, in any order
//!   ([`RedisConnection::ordered`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, Pipeline, RedisConnectionInfo, RedisError,
    RedisFuture, Value,
};

use super::{RedisSettings, StoreError};

/// Where the store's Redis is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a proxy in front of several): `redis://host:port/db`.
    Single(String),
    /// A Redis Cluster, given by one or more of its nodes (`redis://host:port`); the client
    /// learns the others.
    Cluster(Vec<String>),
    /// A master watched by Redis Sentinel: the sentinels (`redis://[:password@]host:26379`,
    /// their own password if they have one), the name they know the master by, and the
    /// credentials of the master and its replicas when they require them.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        master_auth: Option<MasterAuth>,
    },
}

/// The credentials of the servers behind Sentinel (`requirepass`, or an ACL user): the
/// sentinels name the master's address, not how to log in to it.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterAuth {
    pub username: Option<String>,
    pub password: String,
}

impl std::fmt::Debug for MasterAuth {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RedisTopology {
    /// The addresses, for messages: never a password.
    pub fn addresses(&self) -> String {
        let urls: &[String] = match self {
            RedisTopology::Single(url) => std::slice::from_ref(url),
            RedisTopology::Cluster(urls) => urls,
            RedisTopology::Sentinel { sentinels, .. } => sentinels,
        };
        urls.iter()
            .map(|u| match Client::open(u.as_str()) {
                Ok(c) => c.get_connection_info().addr().to_string(),
                Err(_) => "(invalid url)".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A live connection: cheap to clone (every clone multiplexes the same sockets).
#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// What a replacement connection is made from (see the module docs).
enum Origin {
    Single {
        client: Box<Client>,
        config: ConnectionManagerConfig,
    },
    Sentinel(Box<SentinelOrigin>),
    Cluster(Box<ClusterOrigin>),
}

/// How a cluster connection is made again.
struct ClusterOrigin {
    client: ClusterClient,
    /// Held by the one call rebuilding the connection.
    rebuilding: tokio::sync::Mutex<()>,
    /// When it was last rebuilt (µs since `epoch`; 0: never).
    rebuilt_at: AtomicU64,
    connect_timeout: Duration,
}

/// How a connection behind Sentinel finds the master again.
struct SentinelOrigin {
    /// Asked for the master; held by the one call asking.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    config: ConnectionManagerConfig,
    /// The master's address the current connection goes to.
    master: Mutex<String>,
    /// When the sentinels were last asked (µs since `epoch`), so a burst of failing calls asks
    /// once.
    asked: AtomicU64,
}

/// How often a cluster connection is rebuilt at most while calls time out.
const CLUSTER_REBUILD_INTERVAL: Duration = Duration::from_secs(2);

/// How often the sentinels are asked again at most while calls fail.
const SENTINEL_ASK_INTERVAL: Duration = Duration::from_millis(250);

/// The store's connection and what keeps it usable.
pub struct RedisConnection {
    origin: Origin,
    /// The current connection and its generation (bumped on every replacement).
    conn: Mutex<(u64, Connection)>,
    /// When something last came back from Redis, in µs since `epoch`.
    last_answer: AtomicU64,
    epoch: Instant,
    response_timeout: Duration,
    addresses: String,
}

impl RedisConnection {
    /// Connects. Fails with [`StoreError::Unavailable`] at once when the connection is refused,
    /// within `connect_timeout` when nothing answers.
    pub async fn open(
        topology: &RedisTopology,
        settings: &RedisSettings,
    ) -> Result<Self, StoreError> {
        let addresses = topology.addresses();
        let unavailable = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("cannot connect to redis at {addresses}: {e}"))
        };
        let in_time = |what: &str| {
            StoreError::Unavailable(format!(
                "cannot connect to redis at {addresses} within {:?} ({what})",
                settings.connect_timeout
            ))
        };
        let urls: &[String] = match topology {
            RedisTopology::Single(url) => std::slice::from_ref(url),
            RedisTopology::Cluster(urls) => urls,
            RedisTopology::Sentinel { sentinels, .. } => sentinels,
        };
        for (i, url) in urls.iter().enumerate() {
            // The error names the entry, never the URL (it may hold a password).
            Client::open(url.as_str()).map_err(|e| {
                StoreError::Unavailable(format!(
                    "redis url {} of {} is not valid ({e}): redis://[user:password@]host:port[/db]",
                    i + 1,
                    urls.len()
                ))
            })?;
        }
        let (origin, conn) = match topology {
            RedisTopology::Single(url) => {
                let client = Client::open(url.as_str())
                    .map_err(|e| StoreError::Unavailable(format!("invalid redis url: {e}")))?;
                // One plain connection attempt first: it fails at once with a clear reason
                // ("connection refused") where the manager would retry with backoff until our
                // deadline.
                let probe_config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(Some(settings.response_timeout));
                tokio::time::timeout(
                    settings.connect_timeout,
                    client.get_multiplexed_async_connection_with_config(&probe_config),
                )
                .await
                .map_err(|_| in_time("probe"))?
                .map_err(|e| unavailable(&e))?;
                let config = manager_config(settings);
                let manager = tokio::time::timeout(
                    settings.connect_timeout,
                    ConnectionManager::new_with_config(client.clone(), config.clone()),
                )
                .await
                .map_err(|_| in_time("connection manager"))?
                .map_err(|e| unavailable(&e))?;
                (
                    Origin::Single {
                        client: Box::new(client),
                        config,
                    },
                    Connection::Single(manager),
                )
            }
            RedisTopology::Cluster(urls) => {
                let client = ClusterClient::builder(urls.iter().map(String::as_str))
                    .connection_timeout(settings.connect_timeout)
                    .response_timeout(settings.response_timeout)
                    // Redirections and a node's reconnection are retried inside one call, all
                    // within the response timeout: a failover answers 503 until it is over.
                    .overall_response_timeout(Some(settings.response_timeout))
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(200)
                    .build()
                    .map_err(|e| StoreError::Unavailable(format!("invalid redis url: {e}")))?;
                // A seed that accepts the connection and never answers costs a response timeout
                // before the next seed is asked.
                let bound = settings.connect_timeout + 2 * settings.response_timeout;
                let conn = tokio::time::timeout(bound, client.get_async_connection())
                    .await
                    .map_err(|_| in_time("cluster slots"))?
                    .map_err(|e| unavailable(&e))?;
                (
                    Origin::Cluster(Box::new(ClusterOrigin {
                        client,
                        rebuilding: tokio::sync::Mutex::new(()),
                        rebuilt_at: AtomicU64::new(0),
                        connect_timeout: bound,
                    })),
                    Connection::Cluster(conn),
                )
            }
            RedisTopology::Sentinel {
                sentinels,
                master,
                master_auth,
            } => {
                let login = master_auth.as_ref().map(|auth| {
                    let mut info = RedisConnectionInfo::default().set_password(&auth.password);
                    if let Some(user) = &auth.username {
                        info = info.set_username(user);
                    }
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info)
                });
                let mut sentinel = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    login,
                    SentinelServerType::Master,
                )
                .map_err(|e| StoreError::Unavailable(format!("invalid sentinel url: {e}")))?;
                let client =
                    tokio::time::timeout(settings.connect_timeout, sentinel.async_get_client())
                        .await
                        .map_err(|_| in_time("asking the sentinels for the master"))?
                        .map_err(|e| unavailable(&e))?;
                let address = client.get_connection_info().addr().to_string();
                let config = manager_config(settings);
                let manager = tokio::time::timeout(
                    settings.connect_timeout,
                    ConnectionManager::new_with_config(client, config.clone()),
                )
                .await
                .map_err(|_| in_time("connection to the master"))?
                .map_err(|e| unavailable(&e))?;
                tracing::info!(master = %address, name = %master, "redis master found by the sentinels");
                (
                    Origin::Sentinel(Box::new(SentinelOrigin {
                        sentinel: tokio::sync::Mutex::new(sentinel),
                        config,
                        master: Mutex::new(address),
                        asked: AtomicU64::new(0),
                    })),
                    Connection::Single(manager),
                )
            }
        };
        Ok(Self {
            origin,
            conn: Mutex::new((0, conn)),
            last_answer: AtomicU64::new(0),
            epoch: Instant::now(),
            response_timeout: settings.response_timeout,
            addresses,
        })
    }

    /// True when commands sent one after the other run in that order even on different keys:
    /// one server (one connection executes in order). False on a Cluster, where keys of two slots
    /// may live on two nodes: a write that must land before another is awaited first.
    pub fn ordered(&self) -> bool {
        !matches!(self.origin, Origin::Cluster(_))
    }

    /// The addresses connected to (no password).
    pub fn addresses(&self) -> &str {
        &self.addresses
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, (u64, Connection)> {
        lock(&self.conn)
    }

    /// Runs one round trip on the current connection, bounded by the response timeout, and maps
    /// its errors. A timeout with nothing at all answered since the call started means the
    /// connection is dead without knowing it: replace it (once per generation).
    pub async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let (generation, conn) = {
            let guard = self.lock();
            (guard.0, guard.1.clone())
        };
        let started = self.now_us();
        let timed_out = match tokio::time::timeout(self.response_timeout, f(conn)).await {
            Ok(Ok(v)) => {
                self.last_answer.fetch_max(self.now_us(), Ordering::Relaxed);
                return Ok(v);
            }
            Ok(Err(e)) => {
                if !e.is_io_error() {
                    // The server answered (with an error): the connection is alive.
                    self.last_answer.fetch_max(self.now_us(), Ordering::Relaxed);
                }
                if !e.is_timeout() {
                    if e.is_io_error()
                        || e.is_connection_refusal()
                        || e.is_connection_dropped()
                        || e.kind() == ErrorKind::Server(::redis::ServerErrorKind::ReadOnly)
                    {
                        self.follow_master(generation).await;
                    }
                    return Err(map_err(what, e));
                }
                format!("redis did not answer {what} in time: {e}")
            }
            Err(_) => format!(
                "redis did not answer {what} within {:?}",
                self.response_timeout
            ),
        };
        if self.last_answer.load(Ordering::Relaxed) < started {
            self.replace(generation);
        }
        self.rebuild_cluster(generation).await;
        self.follow_master(generation).await;
        Err(StoreError::Unavailable(timed_out))
    }

    /// On a Cluster, after a call timed out: a new cluster connection, its slot map read
    /// afresh from the configured nodes, at most once per [`CLUSTER_REBUILD_INTERVAL`]. The
    /// cluster client refreshes its map on `MOVED` and on a refused connection, not on silence:
    /// with a master hung (not dead) it kept sending that master's slots there after its
    /// replica was promoted, and it was seen wedged after failovers under load (every call
    /// timing out, healthy masters included, until a restart; black-box tries, redis-rs issues
    /// #1528, #1953). This is the way out in both cases.
    async fn rebuild_cluster(&self, generation: u64) {
        let Origin::Cluster(origin) = &self.origin else {
            return;
        };
        let Ok(_rebuilding) = origin.rebuilding.try_lock() else {
            return; // another call is at it
        };
        if self.lock().0 != generation {
            return; // already rebuilt since this call started
        }
        let now = self.now_us();
        let last = origin.rebuilt_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < CLUSTER_REBUILD_INTERVAL.as_micros() as u64 {
            return;
        }
        origin.rebuilt_at.store(now.max(1), Ordering::Relaxed);
        match tokio::time::timeout(origin.connect_timeout, origin.client.get_async_connection())
            .await
        {
            Ok(Ok(conn)) => {
                let mut guard = self.lock();
                if guard.0 == generation {
                    *guard = (generation + 1, Connection::Cluster(conn));
                    tracing::warn!(
                        generation,
                        "redis cluster stopped answering; connected to it anew"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot connect to the redis cluster anew"),
            Err(_) => tracing::warn!("the redis cluster did not answer a new connection in time"),
        }
    }

    /// A write was refused with `READONLY` (inside a pipeline, where [`RedisConnection::call`]
    /// does not see it): with Sentinel, the master may have been demoted; see
    /// [`RedisConnection::follow_master`].
    pub async fn master_may_have_moved(&self) {
        let generation = self.lock().0;
        self.follow_master(generation).await;
    }

    /// With Sentinel: asks the sentinels which server is the master now, and if it moved,
    /// connects to it (see the module docs). Nothing otherwise.
    async fn follow_master(&self, generation: u64) {
        let Origin::Sentinel(origin) = &self.origin else {
            return;
        };
        let SentinelOrigin {
            sentinel,
            config,
            master,
            asked,
        } = origin.as_ref();
        let now = self.now_us();
        let last = asked.load(Ordering::Relaxed);
        if now.saturating_sub(last) < SENTINEL_ASK_INTERVAL.as_micros() as u64
            || asked
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return; // asked a moment ago, or another call is asking
        }
        let Ok(mut sentinel) = sentinel.try_lock() else {
            return;
        };
        let client =
            match tokio::time::timeout(self.response_timeout, sentinel.async_get_client()).await {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "the sentinels name no reachable master yet");
                    return;
                }
                Err(_) => {
                    tracing::warn!("the sentinels did not answer in time");
                    return;
                }
            };
        let address = client.get_connection_info().addr().to_string();
        if *lock(master) == address {
            return; // still the master: the trouble is elsewhere
        }
        match ConnectionManager::new_lazy_with_config(client, config.clone()) {
            Ok(manager) => {
                let mut guard = self.lock();
                if guard.0 == generation {
                    *guard = (generation + 1, Connection::Single(manager));
                }
                drop(guard);
                let before = std::mem::replace(&mut *lock(master), address.clone());
                tracing::warn!(from = %before, to = %address, "redis master moved (sentinel failover); connected to the new one");
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect to the new redis master"),
        }
    }

    fn replace(&self, generation: u64) {
        let Origin::Single { client, config } = &self.origin else {
            // A cluster connection is rebuilt by `rebuild_cluster`; with Sentinel,
            // `follow_master` connects anew when the master moved.
            return;
        };
        let mut guard = self.lock();
        if guard.0 != generation {
            return; // another caller already replaced it
        }
        match ConnectionManager::new_lazy_with_config((**client).clone(), config.clone()) {
            Ok(manager) => {
                tracing::warn!(
                    generation,
                    "redis connection stopped answering; opening a new one"
                );
                *guard = (generation + 1, Connection::Single(manager));
            }
            Err(e) => tracing::warn!(error = %e, "cannot create a new redis connection manager"),
        }
    }
}

/// The manager's settings for one server: its timeouts and a short reconnection.
fn manager_config(settings: &RedisSettings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.response_timeout))
        // A reconnection is two attempts 50-100 ms apart, absorbing a blip. More would make
        // every call during an outage wait out the whole backoff (i.e. the response timeout)
        // instead of failing at once with "connection refused". The next call after a failed
        // reconnection starts a new one, so Redis coming back is noticed on the first call
        // after it does.
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
        .set_number_of_retries(1)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Guarded values are replaced whole, never left half-updated: poison is harmless.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Connection trouble and transient server states are `Unavailable` (HTTP 503, the client
/// retries); a key holding the wrong type, or our own script's `CORRUPT` error, is `Corrupt`.
pub fn map_err(what: &str, e: RedisError) -> StoreError {
    let corrupt = matches!(e.code(), Some("WRONGTYPE" | "CORRUPT"))
        || matches!(e.kind(), ErrorKind::UnexpectedReturnType);
    if corrupt {
        return StoreError::Corrupt(format!("redis {what}: {e}"));
    }
    // Which password, where: the sentinels answer for themselves, the master for itself.
    let login = matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        || matches!(e.kind(), ErrorKind::AuthenticationFailed);
    let hint = if login {
        " (the server's password goes in its URL, redis://[user:]password@host:port; behind \
         Sentinel the master's goes in REDIS_SENTINEL_MASTER_PASSWORD)"
    } else {
        ""
    };
    StoreError::Unavailable(format!("redis {what}: {e}{hint}"))
}
