//! The three indexes (wake, outbox, phases), each split into [`BUCKETS`] keys so that on a Redis
//! Cluster their writes spread over the shards instead of all landing on the one node that would
//! hold a single global key.
//!
//! A contact's entries live in one bucket, chosen from its key ([`bucket_of`]), so each index
//! write touches one key (one slot). Readers (the timer sweep, the outbox recovery, the listings)
//! ask every bucket and merge. Each bucket's keys share a hash tag, and the tags are chosen so
//! that bucket `i` falls in the `i`-th sixteenth of the 16,384 slots: a cluster whose slots are
//! split evenly (what `redis-cli --cluster create` does) gets an even share of the buckets on
//! every master, whatever the deployment's key prefix.
//!
//! Before the buckets, conversa kept each index in one global key:
//! `{prefix}:wake`, `{prefix}:outbox` and `{prefix}:phases`. [`migrate_legacy`] moves their
//! entries into the buckets when a node connects: added to its bucket first, removed from the
//! old key after, so a crash half-way leaves an entry in both places (a wake-up for nothing),
//! never in neither.

use ::redis::Value;

use super::connection::RedisConnection;
use super::{StoreError, decode};

/// How many keys each index is split into. Fixed: changing it would move every contact's
/// entries to another bucket (a migration like [`migrate_legacy`]'s).
pub const BUCKETS: usize = 16;

/// Each bucket's hash tag. `ixNN-M`: the smallest `M` for which the tag's slot (CRC16 mod 16384,
/// as Redis Cluster computes it) falls in `[NN × 1024, (NN + 1) × 1024)`; checked by a test.
const BUCKET_TAGS: [&str; BUCKETS] = [
    "ix00-22", "ix01-21", "ix02-0", "ix03-3", "ix04-41", "ix05-42", "ix06-61", "ix07-62",
    "ix08-11", "ix09-12", "ix10-22", "ix11-21", "ix12-10", "ix13-13", "ix14-41", "ix15-42",
];

/// The bucket of a contact's entries: FNV-1a of `account:contact`, so every node and every
/// version agrees.
pub fn bucket_of(member: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in member.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % BUCKETS as u64) as usize
}

/// The index keys of one deployment (one key prefix).
#[derive(Debug)]
pub struct IndexKeys {
    /// Per bucket: zset, member `account:contact`, score the wake-up in Unix milliseconds.
    pub wake: [String; BUCKETS],
    /// Per bucket: set of `account:contact` whose snapshot holds effects not yet executed.
    pub outbox: [String; BUCKETS],
    /// Per bucket: hash `account:contact` → phase name.
    pub phases: [String; BUCKETS],
    prefix: String,
}

impl IndexKeys {
    pub fn new(prefix: &str) -> Self {
        let keys =
            |what: &str| std::array::from_fn(|b| format!("{prefix}:{{{}}}:{what}", BUCKET_TAGS[b]));
        Self {
            wake: keys("wake"),
            outbox: keys("outbox"),
            phases: keys("phases"),
            prefix: prefix.to_owned(),
        }
    }
}

/// How many legacy entries one migration step moves.
const MIGRATION_BATCH: usize = 1_000;

/// Moves the entries of the global index keys an older conversa wrote into the buckets, then
/// removes them from the old keys (see the module docs). Idempotent, and safe with several
/// nodes migrating at once: a wake-up only ever moves earlier (`ZADD LT`), a phase already in
/// its bucket was written by this layout and is kept (`HSETNX`). An entry that names no contact
/// is dropped. One command per bucket per step: 50,000 entries take seconds.
pub async fn migrate_legacy(conn: &RedisConnection, keys: &IndexKeys) -> Result<u64, StoreError> {
    let old_wake = format!("{}:wake", keys.prefix);
    let old_outbox = format!("{}:outbox", keys.prefix);
    let old_phases = format!("{}:phases", keys.prefix);
    let (wake, outbox, phases): (u64, u64, u64) = (
        query(conn, ::redis::cmd("ZCARD").arg(&old_wake)).await?,
        query(conn, ::redis::cmd("SCARD").arg(&old_outbox)).await?,
        query(conn, ::redis::cmd("HLEN").arg(&old_phases)).await?,
    );
    if wake + outbox + phases == 0 {
        return Ok(0);
    }
    tracing::info!(
        wake,
        outbox,
        phases,
        "moving the index entries of an older conversa into the index buckets"
    );
    let mut moved = 0u64;
    let mut dropped = 0u64;
    loop {
        let batch: Vec<(String, f64)> = query(
            conn,
            ::redis::cmd("ZRANGE")
                .arg(&old_wake)
                .arg(0)
                .arg(MIGRATION_BATCH - 1)
                .arg("WITHSCORES"),
        )
        .await?;
        if batch.is_empty() {
            break;
        }
        let mut per_bucket: Vec<::redis::Cmd> = (0..BUCKETS)
            .map(|b| ::redis::cmd("ZADD").arg(&keys.wake[b]).arg("LT").to_owned())
            .collect();
        for (member, at) in &batch {
            if !names_a_contact(member, &mut dropped) {
                continue;
            }
            per_bucket[bucket_of(member)].arg(*at as u64).arg(member);
        }
        add_all(conn, per_bucket, 3).await?;
        let members: Vec<&String> = batch.iter().map(|(m, _)| m).collect();
        let _: i64 = query(conn, ::redis::cmd("ZREM").arg(&old_wake).arg(&members)).await?;
        moved += batch.len() as u64;
    }
    loop {
        let batch: Vec<String> = query(
            conn,
            ::redis::cmd("SRANDMEMBER")
                .arg(&old_outbox)
                .arg(MIGRATION_BATCH),
        )
        .await?;
        if batch.is_empty() {
            break;
        }
        let mut per_bucket: Vec<::redis::Cmd> = (0..BUCKETS)
            .map(|b| ::redis::cmd("SADD").arg(&keys.outbox[b]).to_owned())
            .collect();
        for member in &batch {
            if names_a_contact(member, &mut dropped) {
                per_bucket[bucket_of(member)].arg(member);
            }
        }
        add_all(conn, per_bucket, 2).await?;
        let _: i64 = query(conn, ::redis::cmd("SREM").arg(&old_outbox).arg(&batch)).await?;
        moved += batch.len() as u64;
    }
    let mut cursor = "0".to_owned();
    loop {
        let (next, batch): (String, Vec<(String, String)>) = query(
            conn,
            ::redis::cmd("HSCAN")
                .arg(&old_phases)
                .arg(&cursor)
                .arg("COUNT")
                .arg(MIGRATION_BATCH),
        )
        .await?;
        let mut per_bucket: Vec<::redis::Pipeline> =
            (0..BUCKETS).map(|_| ::redis::pipe()).collect();
        for (member, phase) in &batch {
            if names_a_contact(member, &mut dropped) {
                per_bucket[bucket_of(member)]
                    .cmd("HSETNX")
                    .arg(&keys.phases[bucket_of(member)])
                    .arg(member)
                    .arg(phase)
                    .ignore();
            }
        }
        for pipe in per_bucket.into_iter().filter(|p| !p.is_empty()) {
            conn.call("index migration", |mut c| async move {
                pipe.exec_async(&mut c).await
            })
            .await?;
        }
        if !batch.is_empty() {
            let fields: Vec<&String> = batch.iter().map(|(m, _)| m).collect();
            let _: i64 = query(conn, ::redis::cmd("HDEL").arg(&old_phases).arg(&fields)).await?;
            moved += batch.len() as u64;
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    if dropped > 0 {
        tracing::warn!(dropped, "index entries that name no contact were dropped");
    }
    Ok(moved)
}

/// Whether an old index member is `account:contact`; counts the ones that are not.
fn names_a_contact(member: &str, dropped: &mut u64) -> bool {
    let ok = member
        .parse::<conversa_actors::contact::ContactKey>()
        .is_ok();
    if !ok {
        *dropped += 1;
    }
    ok
}

/// Runs the per-bucket commands that got more than their first `fixed` arguments.
async fn add_all(
    conn: &RedisConnection,
    per_bucket: Vec<::redis::Cmd>,
    fixed: usize,
) -> Result<(), StoreError> {
    for cmd in per_bucket
        .into_iter()
        .filter(|c| c.args_iter().count() > fixed)
    {
        let _: Value = conn
            .call("index migration", |mut c| async move {
                cmd.query_async(&mut c).await
            })
            .await?;
    }
    Ok(())
}

async fn query<T: ::redis::FromRedisValue>(
    conn: &RedisConnection,
    cmd: &mut ::redis::Cmd,
) -> Result<T, StoreError> {
    let cmd = cmd.clone();
    let reply: Value = conn
        .call("index migration", |mut c| async move {
            cmd.query_async(&mut c).await
        })
        .await?;
    decode("index migration", reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::redis::cluster_routing::Slot;
    use conversa_actors::contact::ContactKey;

    #[test]
    fn each_bucket_falls_in_its_sixteenth_of_the_slots() {
        let width = 16_384 / BUCKETS as u16;
        for (b, tag) in BUCKET_TAGS.iter().enumerate() {
            let slot = Slot::for_key(format!("anything:{{{tag}}}:wake"));
            let first = b as u16 * width;
            assert!(
                (first..first + width).any(|s| Slot::new(s) == Some(slot)),
                "bucket {b} ({tag}) is not in slots {first}..{}",
                first + width
            );
        }
    }

    #[test]
    fn contacts_spread_over_the_buckets() {
        let mut counts = [0u32; BUCKETS];
        for contact in 0..16_000u64 {
            counts[bucket_of(&ContactKey::new(32_000_000, contact).to_string())] += 1;
        }
        for (b, n) in counts.iter().enumerate() {
            assert!((800..1_200).contains(n), "bucket {b} holds {n} of 16,000");
        }
    }
}
