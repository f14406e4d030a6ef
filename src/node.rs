//! This process among the engine nodes that share one store: what makes its names unique
//! (request ids, its place in a shared Kommo schedule, its hold on the token rotation lease)
//! without asking the kernel for randomness each time.

use std::hash::{BuildHasher, Hasher};

/// A number random for each process start (std's per-process hash keys, the clock and the
/// process id mixed).
pub fn nonce() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// This process's name among the nodes: its id and a [`nonce`], so two never share it.
pub fn name() -> String {
    format!("{}-{:016x}", std::process::id(), nonce())
}
