//! The Redis backend of [`Store`]: production, and the way to run several engine nodes on one
//! shared state: one Redis server, or a Redis Cluster ([`connection`]).
//!
//! # Keys
//!
//! | key                                     | type   | content                                   |
//! |-----------------------------------------|--------|-------------------------------------------|
//! | `{prefix}:{<account>:<contact>}:snap`   | hash   | `v` version, `d` head, `w` `o` `p` (below)|
//! | `{prefix}:{<account>:<contact>}:log<N>` | list   | the snapshot's log N (0–2), oldest first  |
//! | `{prefix}:{<bucket>}:wake`              | zset   | member `account:contact`, score wake ms   |
//! | `{prefix}:{<bucket>}:outbox`            | set    | `account:contact` with pending effects    |
//! | `{prefix}:{<bucket>}:phases`            | hash   | `account:contact` → phase name            |
//! | `{prefix}:value:<name>`                 | string | named values (OAuth tokens, ...)          |
//!
//! The `{account:contact}` part of a snapshot's keys is a Redis Cluster hash tag: the
//! compare-and-set script touches the hash and its logs, all in one slot. The indexes are split
//! into 16 buckets, a contact's entries in one of them ([`index`]), so their writes spread over
//! a cluster's shards. On a Cluster every command and pipeline touches one slot; on one server
//! the save script also writes the contact's index bucket (below), so `REDIS_URL` must be a
//! Redis server (or a proxy that runs scripts across slots), never a Cluster or a sharded
//! endpoint: for those, `REDIS_CLUSTER_URLS`.
//!
//! A save sends the head and, per log, only what changed (`LTRIM` of the items dropped from the
//! front, `RPUSH` of the new ones; `DEL` and `RPUSH` to replace it): one message costs the same
//! whatever the conversation's length. A snapshot written before the logs existed has no log
//! keys and its parts inline in `d`; it loads as it is and its first save moves them.
//!
//! Besides `v` and `d`, the snapshot hash keeps a copy of what the indexes must say about it
//! (`w` wake millis, absent when none; `o` `1`/`0` outbox pending; `p` phase), written by the same
//! compare-and-set. They are what lets a writer repair an index another writer's late update
//! clobbered (see [`RedisStore::save`]).
//!
//! # Saving
//!
//! **On one server** (`REDIS_URL`, or the master Sentinel names) a save is one compare-and-set
//! Lua script by `EVALSHA`: it checks the version, then writes the contact's index entries
//! exactly (`ZADD` or `ZREM` of the wake time, `SADD` or `SREM` of the outbox mark, `HSET` of
//! the phase), the logs and the hash — additions before the snapshot, removals after it, so
//! that a script failing halfway (a key of the wrong type) leaves an entry too many, never one
//! missing. Redis runs a script alone and, outside a Cluster, a script may touch any key: the
//! indexes say what the stored snapshot says, in one round trip.
//! (The two-step protocol below cost a second round trip whenever a wake-up moved later — every
//! message of a debounced burst.)
//!
//! **On a Cluster** the bucket and the snapshot may live on two nodes, which no script spans:
//!
//! 1. The *over-approximating* index writes (`ZADD LT` of the new wake time, which only ever
//!    lowers or adds; `SADD` to the outbox set when effects are pending), awaited, then the
//!    compare-and-set script. The indexes must cover the new snapshot before it lands, so that a
//!    crash right after leaves an actor woken for nothing, never a timer forgotten.
//! 2. After a successful CAS only, the writes making the indexes *exact* (`ZADD`/`ZREM`,
//!    `SADD`/`SREM`, `HSET` of the phase), then an `HMGET` of the snapshot's version (awaited
//!    one after the other, for the same reason). Skipped when
//!    step 1 alone leaves them exact: the writer names, in [`IndexUpdate::previous`], the entries
//!    its own previous save made exact for the version this CAS replaced, and going from those
//!    to the new ones only adds or lowers (a wake-up added or brought earlier, an outbox mark
//!    added or kept, the same phase) — see [`prewrites_are_exact`]. That is the usual case: a
//!    message on a quiet contact, or a contact receiving messages in one phase. Removals (timer
//!    gone or later, outbox drained) and phase changes still take step 2. A contact whose step 2
//!    failed is remembered and gets step 2 on its next save, whatever it names.
//!
//! If that version is no longer ours, another writer committed while our exact writes were in
//! flight, and our `ZREM`/`SREM`/raised `ZADD` may have landed after its own and erased its
//! index entries. A third round trip then re-asserts the newest snapshot's entries in
//! over-approximating form (`ZADD LT`, `SADD`). What this cannot cover: our exact writes erase
//! the *pre-write* of a writer that has not committed yet, and that writer crashes between its
//! CAS and its own exact writes. That needs two nodes saving one contact at once plus a crash in
//! a sub-millisecond window; closing it fully would need a script spanning both nodes, which a
//! Cluster does not run (one server does, above).
//!
//! After Redis restarts its script cache is empty: the `EVALSHA` answers `NOSCRIPT` and the
//! save falls back to [`redis::ScriptInvocation::invoke_async`], which loads the script and
//! retries (on a Cluster the over-approximating writes already landed, and repeating them is
//! harmless).
//!
//! # Failures
//!
//! Every round trip is bounded by [`RedisSettings::response_timeout`]; connection, I/O and
//! timeout errors, and the transient server states (`LOADING`, `READONLY`, `MASTERDOWN`,
//! `CLUSTERDOWN`, `OOM`, ...), map to [`StoreError::Unavailable`] (HTTP 503). A save that fails
//! with `Unavailable` has an unknown outcome: the CAS may have landed. Callers reload before
//! retrying, which the version makes safe (a blind retry gets `Conflict`). How the connection
//! recovers by itself is [`connection`]'s business.

pub mod connection;
pub mod index;

use std::fmt;
use std::time::Duration;

use ::redis::{FromRedisValue, RedisError, Script, ScriptInvocation, ServerErrorKind, Value};
use async_trait::async_trait;
use conversa_actors::contact::{ContactKey, Millis};
use conversa_actors::phase::PhaseName;
use dashmap::DashSet;
use futures_util::future::try_join_all;

use super::{IndexUpdate, LOGS, LogWrite, SnapshotWrite, Store, StoreError, StoredSnapshot, Turn};
pub use connection::RedisTopology;
use connection::{RedisConnection, map_err};
use index::{IndexKeys, bucket_of};

/// How the Redis backend connects. The timeouts are explicit on purpose: redis-rs's defaults
/// turned CPU starvation into errors the HTTP layer reported as 500s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// Bound on establishing one connection (at start-up and on every reconnection).
    pub connect_timeout: Duration,
    /// Bound on each round trip; past it the call returns [`StoreError::Unavailable`].
    pub response_timeout: Duration,
    /// First segment of every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// How many replicas must hold a save (and a named value) before it counts as done: Redis's
    /// `WAIT`, sent after the write on the same connection. 0 (the default): the master's
    /// acknowledgement is enough, and a failover may lose the writes it had not passed on.
    pub wait_replicas: u32,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            key_prefix: "conversa".to_owned(),
            wait_replicas: 0,
        }
    }
}

/// Compare-and-set of one snapshot hash (see the module docs).
///
/// `KEYS[1]`: the snapshot hash, `KEYS[2..=4]`: its logs, then on one server the contact's
/// wake, outbox and phase index keys. `ARGV`: expected version, data, wake millis (`""` =
/// none), outbox pending (`1`/`0`), phase, the contact's index member (`""`: the indexes are
/// the caller's business, as on a Cluster), then per log its change. Returns
/// `{1, new_version}` or `{0, current_version}`.
const CAS_SCRIPT: &str = r"
local held = redis.call('HMGET', KEYS[1], 'v', 'w', 'o', 'p')
local raw = held[1]
local cur = 0
if raw then
  cur = tonumber(raw)
  if cur == nil then
    return redis.error_reply('CORRUPT snapshot version is not a number')
  end
end
if cur ~= tonumber(ARGV[1]) then
  return {0, cur}
end
local nextv = cur + 1
local member, logs = ARGV[6], #KEYS - 1
-- On one server the indexes are written here, exact, in the same atomic step as the snapshot.
-- Redis does not undo a script that fails halfway (a key of the wrong type), so what only adds
-- (a wake-up added or brought earlier, an outbox mark) comes before the snapshot and what
-- removes (a wake-up gone or later, a mark gone) after it: a failure anywhere leaves the
-- indexes covering the version stored, never missing what it needs. The hash's own copy of
-- the entries (w, o, p) is what the indexes hold: an entry that did not change is not written.
local wake, outbox, phases, raise
local same_wake = cur > 0 and (held[2] or '') == ARGV[3]
local same_outbox = cur > 0 and held[3] == ARGV[4]
local same_phase = cur > 0 and held[4] == ARGV[5]
if member ~= '' then
  logs = logs - 3
  wake, outbox, phases = KEYS[logs + 2], KEYS[logs + 3], KEYS[logs + 4]
  if ARGV[3] ~= '' and not same_wake then
    local at = tonumber(redis.call('ZSCORE', wake, member))
    if at == nil or at > tonumber(ARGV[3]) then
      redis.call('ZADD', wake, ARGV[3], member)
    elseif at < tonumber(ARGV[3]) then
      raise = true
    end
  end
  if ARGV[4] == '1' and not same_outbox then
    redis.call('SADD', outbox, member)
  end
end
-- The logs: each, mode ('a' append, 'r' replace), items to drop from the front, items to push.
-- A first write starts from empty logs whatever lists a deleted snapshot left behind.
local a = 7
for i = 2, 1 + logs do
  local mode, drop, n = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  if mode == 'r' or cur == 0 then
    redis.call('DEL', KEYS[i])
  elseif drop > 0 then
    redis.call('LTRIM', KEYS[i], drop, -1)
  end
  -- In chunks: unpack is bounded by Lua's stack.
  local from = a
  while from < a + n do
    local to = math.min(from + 999, a + n - 1)
    redis.call('RPUSH', KEYS[i], unpack(ARGV, from, to))
    from = to + 1
  end
  a = a + n
end
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], 'v', nextv, 'd', ARGV[2], 'o', ARGV[4], 'p', ARGV[5])
  redis.call('HDEL', KEYS[1], 'w')
else
  redis.call('HSET', KEYS[1], 'v', nextv, 'd', ARGV[2], 'o', ARGV[4], 'p', ARGV[5], 'w', ARGV[3])
end
if member ~= '' then
  if ARGV[3] == '' and not same_wake then
    redis.call('ZREM', wake, member)
  elseif raise then
    redis.call('ZADD', wake, ARGV[3], member)
  end
  if ARGV[4] ~= '1' and not same_outbox then
    redis.call('SREM', outbox, member)
  end
  if not same_phase then
    redis.call('HSET', phases, member, ARGV[5])
  end
end
return {1, nextv}
";

/// Reads a snapshot ([`Store::load`]). `KEYS[1]`: the snapshot hash, `KEYS[2..]`: its logs.
/// Returns `{{v, d}, log0, log1, log2}` (`v` and `d` nil when nothing is stored).
const LOAD_SCRIPT: &str = r"
local out = {redis.call('HMGET', KEYS[1], 'v', 'd')}
for i = 2, #KEYS do
  out[i] = redis.call('LRANGE', KEYS[i], 0, -1)
end
return out
";

/// Compare-and-set of a named value ([`Store::put_value_if`]). `KEYS[1]`: the value; `ARGV`:
/// `1` if a value is expected (`0`: none), the expected value, the new one. Returns 1 if written.
const PUT_IF_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if cur then return 0 end
elseif cur ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3])
return 1
";

/// A turn in a shared schedule ([`Store::take_turn`]).
///
/// `KEYS[1]`: the schedule's next free slot (µs, Redis's clock); `KEYS[2]`: the nodes that took
/// turns, scored by their last one. `ARGV`: period (µs), node name, longest wait (µs). Returns
/// `{wait µs, nodes seen within the last minute, 1 if a slot was reserved}`: with the schedule
/// booked further ahead than the longest wait nothing is reserved (a caller that would be
/// cancelled before its slot must not hold one) and the wait says when to ask again. Redis's
/// clock serves every node, so theirs need not agree.
const TURN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local free = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local slot = math.max(now, free)
local period = tonumber(ARGV[1])
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000000)
redis.call('PEXPIRE', KEYS[2], 120000)
local nodes = redis.call('ZCARD', KEYS[2])
if slot - now > tonumber(ARGV[3]) then
  return {slot - now - tonumber(ARGV[3]), nodes, 0}
end
redis.call('SET', KEYS[1], string.format('%d', slot + period),
  'PX', math.floor((slot - now + period) / 1000) + 60000)
return {slot - now, nodes, 1}
";

/// How far ahead a turn may be reserved (see `TURN_SCRIPT`): well under the 20 s an effect may
/// run, so a reserved turn is almost always used.
const MAX_TURN_WAIT: Duration = Duration::from_secs(5);

/// Takes or renews a lease ([`Store::try_lease`]). `KEYS[1]`: the lease; `ARGV`: holder, ttl ms.
const LEASE_SCRIPT: &str = r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Gives a lease up if the holder still holds it. `KEYS[1]`: the lease; `ARGV[1]`: holder.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
";

/// How many entries one `SSCAN`/`HSCAN` step asks for at most.
const SCAN_BATCH: usize = 1_000;

/// The Redis [`Store`]. Cheap to share behind an `Arc`; all calls multiplex one connection (one
/// per node on a Cluster).
pub struct RedisStore {
    conn: RedisConnection,
    settings: RedisSettings,
    cas: Script,
    load: Script,
    turn: Script,
    lease: Script,
    release: Script,
    /// Contacts whose last exact index step failed: their next save makes them exact.
    inexact: DashSet<ContactKey>,
    index: IndexKeys,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password: show only the addresses.
        f.debug_struct("RedisStore")
            .field("addr", &self.conn.addresses())
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to one server at `url` (`redis://host:port/db`); see [`RedisStore::connect_to`].
    pub async fn connect(url: &str, settings: RedisSettings) -> Result<Self, StoreError> {
        Self::connect_to(&RedisTopology::Single(url.to_owned()), settings).await
    }

    /// Connects to one server or a Cluster. Fails with [`StoreError::Unavailable`] at once when
    /// the connection is refused, within `connect_timeout` when nothing answers. Once connected,
    /// the store survives Redis going away and coming back without any outside help. Moves the
    /// index entries an older conversa wrote into the buckets ([`index::migrate_legacy`]).
    pub async fn connect_to(
        topology: &RedisTopology,
        settings: RedisSettings,
    ) -> Result<Self, StoreError> {
        let conn = RedisConnection::open(topology, &settings).await?;
        let store = Self {
            conn,
            index: IndexKeys::new(&settings.key_prefix),
            cas: Script::new(CAS_SCRIPT),
            load: Script::new(LOAD_SCRIPT),
            turn: Script::new(TURN_SCRIPT),
            lease: Script::new(LEASE_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            inexact: DashSet::new(),
            settings,
        };
        // Load the CAS script now (on every master of a Cluster) so the first save does not pay
        // for NOSCRIPT. It doubles as a check that this is a Redis we can write to.
        let load = ::redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(CAS_SCRIPT)
            .to_owned();
        let _: Value = store
            .call("SCRIPT LOAD", |mut c| async move {
                load.query_async(&mut c).await
            })
            .await?;
        if store.conn.ordered() {
            // A cluster node given as one server would answer MOVED to most keys.
            let info: String = store
                .call("INFO cluster", |mut c| async move {
                    ::redis::cmd("INFO")
                        .arg("cluster")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if info.contains("cluster_enabled:1") {
                return Err(StoreError::Unavailable(
                    "this Redis is a node of a Redis Cluster: list its nodes in REDIS_CLUSTER_URLS \
                     instead of REDIS_URL"
                        .into(),
                ));
            }
        }
        let moved = index::migrate_legacy(&store.conn, &store.index).await?;
        if moved > 0 {
            tracing::info!(moved, "index entries moved into the index buckets");
        }
        Ok(store)
    }

    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(connection::Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.conn.call(what, f).await
    }

    fn snap_key(&self, key: &ContactKey) -> String {
        format!("{}:{{{key}}}:snap", self.settings.key_prefix)
    }

    /// The list holding log `n` of the contact's snapshot (same hash tag as the snapshot).
    fn log_key(&self, key: &ContactKey, n: usize) -> String {
        format!("{}:{{{key}}}:log{n}", self.settings.key_prefix)
    }

    fn lease_key(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.settings.key_prefix)
    }

    fn value_key(&self, name: &str) -> String {
        format!("{}:value:{name}", self.settings.key_prefix)
    }

    /// `WAIT <replicas> <timeout>` when saves wait for replicas (see
    /// [`RedisSettings::wait_replicas`]). Its timeout leaves a quarter of the response timeout
    /// for the answer to come back.
    fn wait_for_replicas(&self) -> Option<::redis::Cmd> {
        let replicas = self.settings.wait_replicas;
        (replicas > 0).then(|| {
            let timeout = (self.settings.response_timeout * 3 / 4).as_millis().max(1) as u64;
            ::redis::cmd("WAIT").arg(replicas).arg(timeout).to_owned()
        })
    }

    /// A write the server refused. `READONLY` means this server is a replica now: with
    /// Sentinel, the connection follows the master.
    async fn refused(&self, what: &str, e: ::redis::ServerError) -> StoreError {
        if e.kind() == Some(ServerErrorKind::ReadOnly) {
            self.conn.master_may_have_moved().await;
        }
        map_err(what, RedisError::from(e))
    }

    /// The compare-and-set's reply from a save's pipeline, the script run again when Redis had
    /// forgotten it (restarted, or its script cache flushed: `NOSCRIPT`), followed by its own
    /// `WAIT` (the pipeline's ran before this write). A refusal is mapped by
    /// [`RedisStore::refused`].
    async fn script_ran(
        &self,
        reply: Value,
        invocation: &ScriptInvocation<'_>,
        wait: Option<&::redis::Cmd>,
        wait_replies: &mut Vec<Value>,
    ) -> Result<Value, StoreError> {
        match reply {
            Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
                let reply = self
                    .call("save", |mut c| async move {
                        invocation.invoke_async::<Value>(&mut c).await
                    })
                    .await?;
                if let Some(w) = wait {
                    // On a Cluster `WAIT` alone goes to every master and counts the least
                    // replicated.
                    let w = w.clone();
                    wait_replies.push(
                        self.call("save", |mut c| async move {
                            w.query_async::<Value>(&mut c).await
                        })
                        .await?,
                    );
                }
                Ok(reply)
            }
            Value::ServerError(e) => Err(self.refused("save", e).await),
            other => Ok(other),
        }
    }

    /// Checks `WAIT`'s answer: fewer replicas than required means the write may not survive a
    /// failover, so it is not reported done (HTTP 503; a retry finds it applied).
    fn replicated(&self, what: &str, reply: Value) -> Result<(), StoreError> {
        if let Value::ServerError(e) = reply {
            return Err(map_err(what, RedisError::from(e)));
        }
        let reached: u64 = decode("WAIT reply", reply)?;
        let required = u64::from(self.settings.wait_replicas);
        if reached < required {
            return Err(StoreError::Unavailable(format!(
                "redis {what}: written, but held by {reached} of the {required} replicas required \
                 (REDIS_WAIT_REPLICAS) in time"
            )));
        }
        Ok(())
    }

    /// Runs the commands of `first`, then those `second` adds, once `first` has landed, and
    /// returns their replies in order, errors included (`ignore_errors`): one pipeline on one
    /// server, where a connection executes in order; on a Cluster, where the two may go to two
    /// nodes, the second is sent when the first has answered. Each must touch one slot.
    async fn in_order(
        &self,
        what: &str,
        mut first: ::redis::Pipeline,
        second: impl FnOnce(&mut ::redis::Pipeline),
    ) -> Result<Vec<Value>, StoreError> {
        if self.conn.ordered() || first.is_empty() {
            second(&mut first);
            first.ignore_errors();
            return self
                .call(what, |mut c| async move { first.query_async(&mut c).await })
                .await;
        }
        first.ignore_errors();
        let mut replies: Vec<Value> = self
            .call(what, |mut c| async move { first.query_async(&mut c).await })
            .await?;
        let mut then = ::redis::pipe();
        second(&mut then);
        then.ignore_errors();
        let then: Vec<Value> = self
            .call(what, |mut c| async move { then.query_async(&mut c).await })
            .await?;
        replies.extend(then);
        Ok(replies)
    }

    /// Step 2 of a save (see the module docs): exact index writes, then the check for a later
    /// writer and, if there is one, the repair of its entries.
    async fn make_indexes_exact(
        &self,
        key: &ContactKey,
        snap_key: &str,
        version: u64,
        index: &IndexUpdate,
    ) -> Result<(), StoreError> {
        let member = key.to_string();
        let bucket = bucket_of(&member);
        let (wake, outbox, phases) = (
            &self.index.wake[bucket],
            &self.index.outbox[bucket],
            &self.index.phases[bucket],
        );
        let mut writes = ::redis::pipe();
        match index.wake_at {
            Some(at) => writes.cmd("ZADD").arg(wake).arg(at).arg(&member),
            None => writes.cmd("ZREM").arg(wake).arg(&member),
        };
        if index.outbox_pending {
            writes.cmd("SADD").arg(outbox).arg(&member);
        } else {
            writes.cmd("SREM").arg(outbox).arg(&member);
        }
        writes
            .cmd("HSET")
            .arg(phases)
            .arg(&member)
            .arg(index.phase.as_str());
        let replies = self
            .in_order("index update", writes, |check| {
                check
                    .cmd("HMGET")
                    .arg(snap_key)
                    .arg("v")
                    .arg("w")
                    .arg("o")
                    .arg("p");
            })
            .await?;
        let Some((check, writes)) = replies.split_last() else {
            return Err(StoreError::Corrupt("empty pipeline reply".into()));
        };
        for reply in writes {
            if let Value::ServerError(e) = reply {
                return Err(map_err("index update", RedisError::from(e.clone())));
            }
        }
        if let Value::ServerError(e) = check {
            return Err(map_err("index update", RedisError::from(e.clone())));
        }
        let (v, w, o, p): (Option<u64>, Option<u64>, Option<String>, Option<String>) =
            decode("snapshot index fields", check.clone())?;
        if v == Some(version) {
            return Ok(());
        }
        // A later writer committed while our exact writes were in flight: re-assert its entries
        // in over-approximating form, in case ours landed after its own.
        tracing::debug!(%key, ours = version, current = ?v, "concurrent save; repairing indexes");
        let mut pipe = ::redis::pipe();
        if let Some(w) = w {
            pipe.cmd("ZADD")
                .arg(wake)
                .arg("LT")
                .arg(w)
                .arg(&member)
                .ignore();
        }
        if o.as_deref() == Some("1") {
            pipe.cmd("SADD").arg(outbox).arg(&member).ignore();
        }
        if let Some(p) = p {
            pipe.cmd("HSET").arg(phases).arg(&member).arg(p).ignore();
        }
        if !pipe.is_empty() {
            self.call("index repair", |mut c| async move {
                pipe.exec_async(&mut c).await
            })
            .await?;
        }
        Ok(())
    }

    /// Walks a `SSCAN`/`HSCAN` cursor until `limit` distinct items are collected or the scan
    /// ends. `parse` turns one scan batch into items keyed by contact.
    async fn scan<T>(
        &self,
        command: &'static str,
        key: &str,
        limit: usize,
        parse: impl Fn(Value) -> Result<Vec<(ContactKey, T)>, StoreError>,
    ) -> Result<Vec<(ContactKey, T)>, StoreError> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor = "0".to_owned();
        loop {
            let count = (limit - out.len()).clamp(10, SCAN_BATCH);
            let cmd = ::redis::cmd(command)
                .arg(key)
                .arg(&cursor)
                .arg("COUNT")
                .arg(count)
                .to_owned();
            let reply: Value = self
                .call(
                    command,
                    |mut c| async move { cmd.query_async(&mut c).await },
                )
                .await?;
            let (next, batch): (String, Value) = decode(command, reply)?;
            for (k, item) in parse(batch)? {
                // SCAN may return an element more than once.
                if seen.insert(k) {
                    out.push((k, item));
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
            if next == "0" {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

/// The fewest replicas connected to one master holding slots, from `CLUSTER NODES` (`id
/// address flags master ping pong epoch link-state slots...`); 0 when no master holds slots.
fn fewest_replicas(nodes: &str) -> usize {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|f: &Vec<&str>| f.len() >= 8)
        .collect();
    let healthy = |f: &[&str]| !f[2].contains("fail") && f[7] == "connected";
    lines
        .iter()
        .filter(|f| f[2].contains("master") && f.len() > 8 && !f[2].contains("fail"))
        .map(|master| {
            lines
                .iter()
                .filter(|f| f[2].contains("slave") && f[3] == master[0] && healthy(f))
                .count()
        })
        .min()
        .unwrap_or(0)
}

/// Whether step 1 of a save (`ZADD LT` of the wake-up, `SADD` of the outbox mark) leaves the
/// indexes exact, given the exact entries of the version it replaces: only if nothing has to be
/// removed or raised and the phase stays.
fn prewrites_are_exact(previous: &IndexUpdate, next: &IndexUpdate) -> bool {
    let wake = match (previous.wake_at, next.wake_at) {
        (None, None) | (None, Some(_)) => true,
        (Some(before), Some(after)) => after <= before,
        (Some(_), None) => false,
    };
    let outbox = next.outbox_pending || !previous.outbox_pending;
    wake && outbox && previous.phase == next.phase
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    /// `PING` (on a Cluster the client sends it to every master and needs all to answer: a
    /// frozen master makes `/ready` say not ready), then whether saves can be taken as
    /// configured, which a cluster refusing commands or missing replicas does not show by
    /// failing `PING`: on a Cluster, `cluster_state:ok` and no slot whose master failed
    /// (`CLUSTER INFO`); with `REDIS_WAIT_REPLICAS=N`, `N` replicas connected to the master (to
    /// every master holding slots, on a Cluster), or every save would answer 503. The engine's
    /// start-up asks it too.
    async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self
            .call("PING", |mut c| async move {
                ::redis::cmd("PING").query_async(&mut c).await
            })
            .await?;
        if pong != "PONG" {
            return Err(StoreError::Corrupt(format!("PING answered {pong:?}")));
        }
        let cluster = !self.conn.ordered();
        if cluster {
            let info: String = self
                .call("CLUSTER INFO", |mut c| async move {
                    ::redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let field = |name: &str| {
                info.lines()
                    .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                    .unwrap_or("?")
                    .to_owned()
            };
            let (state, failed) = (field("cluster_state"), field("cluster_slots_fail"));
            if state != "ok" || failed != "0" {
                return Err(StoreError::Unavailable(format!(
                    "redis cluster cannot serve every slot (cluster_state:{state}, \
                     cluster_slots_fail:{failed})"
                )));
            }
        }
        let required = self.settings.wait_replicas as usize;
        if required == 0 {
            return Ok(());
        }
        let connected = if cluster {
            let nodes: String = self
                .call("CLUSTER NODES", |mut c| async move {
                    ::redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            fewest_replicas(&nodes)
        } else {
            let info: String = self
                .call("INFO replication", |mut c| async move {
                    ::redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            info.lines()
                .filter(|l| l.starts_with("slave") && l.contains("state=online"))
                .count()
        };
        if connected < required {
            return Err(StoreError::Unavailable(format!(
                "REDIS_WAIT_REPLICAS={required}, but a master has {connected} replicas \
                 connected and in sync: every save would answer 503"
            )));
        }
        Ok(())
    }

    /// The hash and its logs read by one script, atomically: what one compare-and-set wrote,
    /// never half of two. (A script rather than `MULTI`/`EXEC`: on a Cluster a transaction
    /// caught by a moved slot is aborted, where a script is redirected like any command.)
    async fn load(&self, key: &ContactKey) -> Result<Option<StoredSnapshot>, StoreError> {
        let mut invocation = self.load.prepare_invoke();
        invocation.key(self.snap_key(key));
        for n in 0..LOGS {
            invocation.key(self.log_key(key, n));
        }
        let reply: Value = self
            .call("load", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        type Loaded = (
            (Option<String>, Option<Vec<u8>>),
            Vec<Vec<u8>>,
            Vec<Vec<u8>>,
            Vec<Vec<u8>>,
        );
        let ((v, d), log0, log1, log2): Loaded = decode("snapshot", reply)?;
        match (v, d) {
            (None, None) => Ok(None),
            (Some(v), Some(data)) => {
                let version = v.parse().map_err(|_| {
                    StoreError::Corrupt(format!("snapshot of {key} has version {v:?}"))
                })?;
                Ok(Some(StoredSnapshot {
                    version,
                    data,
                    logs: [log0, log1, log2],
                }))
            }
            (v, d) => Err(StoreError::Corrupt(format!(
                "snapshot of {key} is incomplete (version {v:?}, data present: {})",
                d.is_some()
            ))),
        }
    }

    /// One `HGET` of the version field: no snapshot data crosses the wire.
    async fn version(&self, key: &ContactKey) -> Result<u64, StoreError> {
        let cmd = ::redis::cmd("HGET")
            .arg(self.snap_key(key))
            .arg("v")
            .to_owned();
        let reply: Value = self
            .call(
                "version",
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;
        match decode::<Option<String>>("snapshot version", reply)? {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("snapshot of {key} has version {v:?}"))),
        }
    }

    /// See the module docs for the order of writes and what a failure leaves behind.
    async fn write(
        &self,
        key: &ContactKey,
        expected: u64,
        snapshot: &SnapshotWrite,
        index: &IndexUpdate,
    ) -> Result<u64, StoreError> {
        let member = key.to_string();
        let snap_key = self.snap_key(key);
        let bucket = bucket_of(&member);
        // One server: the script writes the indexes too (see the module docs).
        let in_script = self.conn.ordered();
        let wake_arg = index.wake_at.map(|at| at.to_string()).unwrap_or_default();
        let mut invocation: ScriptInvocation<'_> = self.cas.prepare_invoke();
        invocation
            .key(&snap_key)
            .arg(expected)
            .arg(&snapshot.head)
            .arg(&wake_arg)
            .arg(if index.outbox_pending { "1" } else { "0" })
            .arg(index.phase.as_str())
            .arg(if in_script { member.as_str() } else { "" });
        for (n, log) in snapshot.logs.iter().enumerate() {
            invocation.key(self.log_key(key, n));
            let (mode, drop_front, items) = match log {
                LogWrite::Append { drop_front, items } => ("a", *drop_front, items),
                LogWrite::Replace(items) => ("r", 0, items),
            };
            invocation.arg(mode).arg(drop_front).arg(items.len());
            for item in items {
                invocation.arg(item);
            }
        }
        if in_script {
            invocation
                .key(&self.index.wake[bucket])
                .key(&self.index.outbox[bucket])
                .key(&self.index.phases[bucket]);
        }

        // On a Cluster, step 1: over-approximate the indexes, then compare-and-set.
        let mut pre = ::redis::pipe();
        if !in_script {
            if let Some(at) = index.wake_at {
                pre.cmd("ZADD")
                    .arg(&self.index.wake[bucket])
                    .arg("LT")
                    .arg(at)
                    .arg(&member);
            }
            if index.outbox_pending {
                pre.cmd("SADD").arg(&self.index.outbox[bucket]).arg(&member);
            }
        }
        let wait = self.wait_for_replicas();
        // On one server the `WAIT` after the compare-and-set covers everything before it (same
        // connection); on a Cluster the index writes went to another node and wait there.
        let wait_pre = match &wait {
            Some(w) if !in_script && !pre.is_empty() => {
                pre.add_command(w.clone());
                true
            }
            _ => false,
        };
        let mut replies = self
            .in_order("save", pre, |pipe| {
                pipe.invoke_script(&invocation);
                if let Some(w) = &wait {
                    pipe.add_command(w.clone());
                }
            })
            .await?;
        let mut wait_replies = Vec::new();
        if wait.is_some() {
            wait_replies.extend(replies.pop());
        }
        let cas_reply = replies
            .pop()
            .ok_or_else(|| StoreError::Corrupt("empty pipeline reply".into()))?;
        if wait_pre {
            wait_replies.extend(replies.pop());
        }
        let pre_write_error = replies.into_iter().find_map(|r| match r {
            Value::ServerError(e) => Some(RedisError::from(e)),
            _ => None,
        });
        let cas_reply = self
            .script_ran(cas_reply, &invocation, wait.as_ref(), &mut wait_replies)
            .await?;
        let (applied, version): (i64, u64) = decode("CAS result", cas_reply)?;
        if applied != 1 {
            return Err(StoreError::Conflict { current: version });
        }
        for reply in wait_replies {
            self.replicated("save", reply)?;
        }
        if in_script {
            return Ok(version);
        }

        let known_exact = !self.inexact.contains(key);
        if known_exact
            && let Some(previous) = &index.previous
            && prewrites_are_exact(previous, index)
        {
            // Step 1 wrote exactly what this snapshot needs: nothing to correct.
            return Ok(version);
        }
        // Step 2: the snapshot is durable; make the indexes exact.
        match self
            .make_indexes_exact(key, &snap_key, version, index)
            .await
        {
            Ok(()) => {
                if !known_exact {
                    self.inexact.remove(key);
                }
                Ok(version)
            }
            Err(e) => match pre_write_error {
                // The over-approximating writes landed: the indexes cover the new snapshot (an
                // extra wake-up or outbox mark, a stale phase name) until the next save.
                None => {
                    tracing::warn!(%key, version, error = %e, "saved, but index update failed");
                    self.inexact.insert(*key);
                    Ok(version)
                }
                // Neither step reached the indexes: report it, so the caller retries (reloading
                // first, as after any failed save).
                Some(pre) => {
                    tracing::error!(%key, version, error = %e, pre_write = %pre,
                        "saved, but the indexes could not be written");
                    Err(e)
                }
            },
        }
    }

    /// Every bucket asked at once, their answers merged: the earliest `limit` of all.
    async fn due(
        &self,
        upto: Millis,
        limit: usize,
    ) -> Result<Vec<(ContactKey, Millis)>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let per_bucket = self.index.wake.iter().map(|wake| async move {
            let cmd = ::redis::cmd("ZRANGEBYSCORE")
                .arg(wake)
                .arg("-inf")
                .arg(upto)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(i64::try_from(limit).unwrap_or(i64::MAX))
                .to_owned();
            let reply: Value = self
                .call("due", |mut c| async move { cmd.query_async(&mut c).await })
                .await?;
            let entries: Vec<(Vec<u8>, f64)> = decode("wake index", reply)?;
            Ok::<_, StoreError>(
                entries
                    .into_iter()
                    .filter_map(|(member, at)| {
                        let key = parse_member(wake, &member)?;
                        // Scores are whole milliseconds, well inside f64's exact integer range.
                        Some((key, at as Millis))
                    })
                    .collect::<Vec<_>>(),
            )
        });
        let mut due: Vec<(ContactKey, Millis)> = try_join_all(per_bucket)
            .await?
            .into_iter()
            .flatten()
            .collect();
        due.sort_by_key(|&(_, at)| at);
        due.truncate(limit);
        Ok(due)
    }

    async fn pending_outbox_count(&self) -> Result<u64, StoreError> {
        let per_bucket = self.index.outbox.iter().map(|outbox| async move {
            let cmd = ::redis::cmd("SCARD").arg(outbox).to_owned();
            self.call("SCARD", |mut c| async move {
                cmd.query_async::<u64>(&mut c).await
            })
            .await
        });
        Ok(try_join_all(per_bucket).await?.into_iter().sum())
    }

    async fn pending_outbox(&self, limit: usize) -> Result<Vec<ContactKey>, StoreError> {
        let mut found = Vec::new();
        for set in &self.index.outbox {
            if found.len() >= limit {
                break;
            }
            let batch = self
                .scan("SSCAN", set, limit - found.len(), |batch| {
                    let members: Vec<Vec<u8>> = decode("outbox index", batch)?;
                    Ok(members
                        .iter()
                        .filter_map(|m| parse_member(set, m))
                        .map(|k| (k, ()))
                        .collect())
                })
                .await?;
            found.extend(batch.into_iter().map(|(k, ())| k));
        }
        Ok(found)
    }

    async fn phases(&self, limit: usize) -> Result<Vec<(ContactKey, PhaseName)>, StoreError> {
        let mut found = Vec::new();
        for hash in &self.index.phases {
            if found.len() >= limit {
                break;
            }
            let batch = self
                .scan("HSCAN", hash, limit - found.len(), |batch| {
                    let pairs: Vec<(Vec<u8>, String)> = decode("phase index", batch)?;
                    Ok(pairs
                        .into_iter()
                        .filter_map(|(m, phase)| {
                            Some((parse_member(hash, &m)?, PhaseName::parse(&phase)?))
                        })
                        .collect())
                })
                .await?;
            found.extend(batch);
        }
        Ok(found)
    }

    async fn get_value(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let cmd = ::redis::cmd("GET").arg(self.value_key(name)).to_owned();
        let reply: Value = self
            .call(
                "get value",
                |mut c| async move { cmd.query_async(&mut c).await },
            )
            .await?;
        decode("named value", reply)
    }

    /// `SET key value NX GET` (Redis ≥ 7.0): one atomic step that answers the value already
    /// there, if any.
    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(self.lease_key(name))
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64);
        let held: i64 = self
            .call("take lease", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(held == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        invocation.key(self.lease_key(name)).arg(holder);
        let _: i64 = self
            .call("release lease", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(())
    }

    async fn take_turn(
        &self,
        name: &str,
        node: &str,
        period: Duration,
    ) -> Result<Option<Turn>, StoreError> {
        // One hash tag: both keys in one slot (Redis Cluster).
        let tag = format!("{{{}:turns:{name}}}", self.settings.key_prefix);
        let mut invocation = self.turn.prepare_invoke();
        invocation
            .key(format!("{tag}:next"))
            .key(format!("{tag}:nodes"))
            .arg(period.as_micros() as u64)
            .arg(node)
            .arg(MAX_TURN_WAIT.as_micros() as u64);
        let (wait_us, nodes, reserved): (u64, u32, u8) = self
            .call("take turn", |mut c| {
                let invocation = &invocation;
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(Some(Turn {
            wait: Duration::from_micros(wait_us),
            nodes: nodes.max(1),
            reserved: reserved == 1,
        }))
    }

    async fn put_value_if_absent(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cmd = ::redis::cmd("SET")
            .arg(self.value_key(name))
            .arg(data)
            .arg("NX")
            .arg("GET")
            .to_owned();
        let reply = self.write_value("put value if absent", cmd).await?;
        let existing: Option<Vec<u8>> = decode("named value", reply)?;
        Ok(existing.unwrap_or_else(|| data.to_vec()))
    }

    /// One `EVAL` (the script travels with it: no script cache to miss; this is rare).
    async fn put_value_if(
        &self,
        name: &str,
        expected: Option<&[u8]>,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let cmd = ::redis::cmd("EVAL")
            .arg(PUT_IF_SCRIPT)
            .arg(1)
            .arg(self.value_key(name))
            .arg(if expected.is_some() { "1" } else { "0" })
            .arg(expected.unwrap_or_default())
            .arg(data)
            .to_owned();
        let reply = self.write_value("put value if", cmd).await?;
        let written: i64 = decode("put value if", reply)?;
        Ok(written == 1)
    }

    async fn put_value(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let cmd = ::redis::cmd("SET")
            .arg(self.value_key(name))
            .arg(data)
            .to_owned();
        self.write_value("put value", cmd).await?;
        Ok(())
    }
}

impl RedisStore {
    /// Runs one write of a named value, followed by `WAIT` when saves wait for replicas (a
    /// rotated Kommo token lost in a failover would lock the account out).
    async fn write_value(&self, what: &str, cmd: ::redis::Cmd) -> Result<Value, StoreError> {
        let mut pipe = ::redis::pipe();
        pipe.add_command(cmd);
        let wait = self.wait_for_replicas();
        if let Some(w) = wait.clone() {
            pipe.add_command(w);
        }
        pipe.ignore_errors();
        let mut replies: Vec<Value> = self
            .call(what, |mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        if wait.is_some() {
            let reply = replies
                .pop()
                .ok_or_else(|| StoreError::Corrupt("empty pipeline reply".into()))?;
            self.replicated(what, reply)?;
        }
        match replies.pop() {
            Some(Value::ServerError(e)) => Err(self.refused(what, e).await),
            Some(reply) => Ok(reply),
            None => Err(StoreError::Corrupt("empty pipeline reply".into())),
        }
    }
}

/// Decodes a reply whose shape this module chose; a mismatch means someone else wrote the key.
fn decode<T: FromRedisValue>(what: &str, value: Value) -> Result<T, StoreError> {
    ::redis::from_redis_value(value)
        .map_err(|e| StoreError::Corrupt(format!("unexpected {what} in redis: {e}")))
}

/// `account:contact` back to a key; anything else is logged and skipped, so one bad entry does
/// not stop the sweep over all the others.
fn parse_member(index: &str, member: &[u8]) -> Option<ContactKey> {
    let parsed = std::str::from_utf8(member)
        .ok()
        .and_then(|s| s.parse::<ContactKey>().ok());
    if parsed.is_none() {
        tracing::warn!(
            index,
            member = %String::from_utf8_lossy(member),
            "skipping an index entry that is not a contact key"
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::fewest_replicas;

    /// `CLUSTER NODES` as Redis 7 prints it: three masters, one with two replicas, one with one,
    /// one whose replica failed; a failed master without slots; a handshake line cut short.
    const NODES: &str = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
a2 127.0.0.1:7002@17002 master - 0 1 2 connected 5461-10922
a3 127.0.0.1:7003@17003 master - 0 1 3 connected 10923-16383
r1 127.0.0.1:7004@17004 slave a1 0 1 1 connected
r2 127.0.0.1:7005@17005 slave a1 0 1 1 connected
r3 127.0.0.1:7006@17006 slave a2 0 1 2 connected
r4 127.0.0.1:7007@17007 slave,fail a3 0 1 3 disconnected
old 127.0.0.1:7008@17008 master,fail - 0 1 4 disconnected
cut 127.0.0.1:7009@17009 handshake
";

    #[test]
    fn the_master_with_fewest_live_replicas_counts() {
        assert_eq!(fewest_replicas(NODES), 0, "a3's only replica failed");
        let healed = NODES.replace(
            "slave,fail a3 0 1 3 disconnected",
            "slave a3 0 1 3 connected",
        );
        assert_eq!(fewest_replicas(&healed), 1, "a2 and a3 have one each");
        assert_eq!(fewest_replicas(""), 0);
    }
}
