//! Giving freed memory back to the OS on a quiet tick.
//!
//! Why: mimalloc (the binary's global allocator, `main.rs`) purges freed
//! pages lazily: a freed page is only scheduled for purging, one second
//! out, and the purge happens when some later page free on any thread
//! finds the schedule expired. A shard that read a large body (a hostile
//! peer's endless 50 MB answer, a big `/sync` response) and then went
//! quiet kept that memory resident indefinitely, because no later page
//! free came: two capped 50 MB reads left about 125 MB behind
//! (`tests/fault_federation_peer.rs`). A collection every
//! [`PERIOD`] runs the expired purges and frees this thread's empty
//! pages; it does not force anything, so a busy shard keeps its warm
//! pages and pays a visit of its page lists per period.
//!
//! If the binary uses another allocator this touches only mimalloc's own
//! (unused) state and does nothing.

use std::time::Duration;

/// How often a shard collects: above mimalloc's purge delay (1 s), so an
/// expired schedule is found on the next tick.
pub const PERIOD: Duration = Duration::from_secs(2);

/// Runs this thread's allocator collection now. Cheap when nothing is
/// due: a walk of the thread's non-full pages and a clock check.
pub fn collect() {
    // SAFETY: `mi_collect` takes no pointers and only reads and updates
    // the allocator's own thread-local and global state; it may be called
    // from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// A shard's housekeeping task: [`collect`] every [`PERIOD`], for the
/// shard's lifetime.
pub async fn run_collector() {
    loop {
        monoio::time::sleep(PERIOD).await;
        collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collecting_with_nothing_to_do_is_harmless() {
        let v: Vec<Vec<u8>> = (0..1000).map(|i| vec![0u8; i]).collect();
        drop(v);
        collect();
        collect();
    }
}
