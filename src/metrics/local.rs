//! Per-shard gauges of work in progress (open connections, requests and
//! mesh jobs running): thread-local cells, raised and lowered by RAII
//! guards on the shard doing the work.

use std::cell::Cell;

/// What a [`Tracked`] guard counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    /// HTTP connections open on this shard (all listeners).
    Connections = 0,
    /// HTTP requests being handled on this shard.
    Requests = 1,
    /// Jobs from other shards running here (mesh `submit_to`/`send_to`).
    MeshJobs = 2,
}

const N: usize = 3;

thread_local! {
    static GAUGES: [Cell<i64>; N] = const { [const { Cell::new(0) }; N] };
}

/// Per-shard counters (monotonic).
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// HTTP connections moved here from another shard (`http::handoff`).
    ConnectionsMovedIn = 0,
}

const N_COUNTERS: usize = 1;

thread_local! {
    static COUNTERS: [Cell<u64>; N_COUNTERS] = const { [const { Cell::new(0) }; N_COUNTERS] };
}

/// Adds one to this thread's `c`.
pub fn bump(c: Counter) {
    COUNTERS.with(|v| v[c as usize].set(v[c as usize].get() + 1));
}

/// This thread's count of `c`.
pub fn count(c: Counter) -> u64 {
    COUNTERS.with(|v| v[c as usize].get())
}

/// Holds one unit of a gauge until dropped.
#[must_use]
pub struct Tracked(Gauge, std::marker::PhantomData<*const ()>);

/// Raises `g` on this thread until the guard drops (on this thread: the
/// guard is not `Send`, as it lives in shard-local tasks).
pub fn track(g: Gauge) -> Tracked {
    GAUGES.with(|c| c[g as usize].set(c[g as usize].get() + 1));
    Tracked(g, std::marker::PhantomData)
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let g = self.0 as usize;
        GAUGES.with(|c| c[g].set(c[g].get() - 1));
    }
}

/// This thread's current value of `g`.
pub fn value(g: Gauge) -> i64 {
    GAUGES.with(|c| c[g as usize].get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_raise_and_lower() {
        let before = value(Gauge::Requests);
        let a = track(Gauge::Requests);
        let b = track(Gauge::Requests);
        assert_eq!(value(Gauge::Requests), before + 2);
        drop(a);
        drop(b);
        assert_eq!(value(Gauge::Requests), before);
    }
}
