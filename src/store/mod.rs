//! The store backends behind [`conversa_actors::store::Store`]: embedded (redb, the default when
//! no Redis is configured, so `cargo run` needs nothing installed) and Redis (production and
//! several engine nodes). The in-memory backend lives in the actors crate, behind its `testing`
//! feature (tests only).

pub mod embedded;
pub mod redis;

pub use conversa_actors::store::{
    IndexUpdate, LOGS, LogWrite, SnapshotWrite, Store, StoreError, StoredSnapshot, Turn,
    apply_log_write,
};
