//! Bounded memory: each shard runs at most a few of the requests that build
//! a big answer in memory (initial and full-state syncs, large `/messages`
//! pages, whole-room `/members` and `/state`, big state resolutions) and
//! queues the rest fairly, one turn per user (or room) at a time
//! ([`FairGate`]). Without it, 1,000 members of one room doing their first
//! `/sync` at once held ~1,000 answers in memory together (peak ~970 MB
//! resident; bench/RESULTS.md, "sync-burst").
//!
//! A client past a full queue, or one that waited longer than
//! `queue_timeout_ms`, is refused with [`Overloaded`] (the edge answers 503
//! `M_LIMIT_EXCEEDED` with a retry hint) rather than held: work nobody can
//! serve soon should not hold memory either. State resolutions are owed by
//! the server, so they wait and are never refused.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::primitives::{FairGate, Full, GatePermit};

/// `[admission]`: the per-shard caps. `enabled = false` lets everything run
/// at once (as before the caps).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    pub enabled: bool,
    /// Initial (no `since`) and `full_state=true` syncs computed at once.
    pub initial_syncs: usize,
    /// `/messages` pages with `limit` above `large_messages_limit` at once.
    pub large_messages: usize,
    pub large_messages_limit: usize,
    /// Whole-room `/members` and `/state` answers at once.
    pub room_state: usize,
    /// State resolutions large enough for the blocking pool at once.
    pub state_resolutions: usize,
    /// Requests waiting per gate and shard before more are refused.
    pub max_queued: usize,
    /// Longest a request waits for its turn before it is refused.
    pub queue_timeout_ms: u64,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        AdmissionSection {
            enabled: true,
            initial_syncs: 4,
            large_messages: 8,
            large_messages_limit: 100,
            room_state: 8,
            state_resolutions: 2,
            max_queued: 2_000,
            queue_timeout_ms: 60_000,
        }
    }
}

impl AdmissionSection {
    /// Checked at start with the rest of the configuration.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let caps = [
            ("admission.initial_syncs", self.initial_syncs),
            ("admission.large_messages", self.large_messages),
            ("admission.room_state", self.room_state),
            ("admission.state_resolutions", self.state_resolutions),
        ];
        for (key, v) in caps {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.queue_timeout_ms == 0 {
            return Err(("admission.queue_timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why expensive work was not started; retrying later can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    #[error(transparent)]
    Full(#[from] Full),
    #[error("{gate}: waited {waited_ms} ms for a turn")]
    TimedOut { gate: &'static str, waited_ms: u64 },
}

impl crate::error::Retryable for Overloaded {
    fn retryable(&self) -> bool {
        true
    }
}

/// Which gate a piece of work goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    InitialSync,
    LargeMessages,
    RoomState,
    StateResolution,
}

/// One shard's gates (in its `ShardState`).
pub struct Admission {
    initial_sync: FairGate,
    large_messages: FairGate,
    room_state: FairGate,
    state_resolution: FairGate,
    large_messages_limit: usize,
    queue_timeout: Duration,
}

impl Admission {
    pub fn new(cfg: &AdmissionSection) -> Admission {
        let gate = |name, cap| {
            if cfg.enabled {
                FairGate::new(name, cap, cfg.max_queued)
            } else {
                FairGate::open(name)
            }
        };
        Admission {
            initial_sync: gate("initial_sync", cfg.initial_syncs),
            large_messages: gate("large_messages", cfg.large_messages),
            room_state: gate("room_state", cfg.room_state),
            state_resolution: gate("state_resolution", cfg.state_resolutions),
            large_messages_limit: if cfg.enabled {
                cfg.large_messages_limit
            } else {
                usize::MAX
            },
            queue_timeout: Duration::from_millis(cfg.queue_timeout_ms.max(1)),
        }
    }

    /// Whether a `/messages` page of `limit` events goes through the gate.
    pub fn is_large_page(&self, limit: usize) -> bool {
        limit > self.large_messages_limit
    }

    pub fn gate(&self, work: Work) -> &FairGate {
        match work {
            Work::InitialSync => &self.initial_sync,
            Work::LargeMessages => &self.large_messages,
            Work::RoomState => &self.room_state,
            Work::StateResolution => &self.state_resolution,
        }
    }

    /// Waits for a turn of `key` (a user id) at `work`; refused when the
    /// queue is full or the turn does not come within the queue timeout.
    pub async fn enter(&self, work: Work, key: &str) -> Result<GatePermit, Overloaded> {
        let gate = self.gate(work);
        let started = std::time::Instant::now();
        match monoio::time::timeout(self.queue_timeout, gate.enter(key)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(Overloaded::TimedOut {
                gate: gate.name(),
                waited_ms: started.elapsed().as_millis() as u64,
            }),
        }
    }

    /// Waits for a turn of `key` (a room id) at work the server owes; never
    /// refused.
    pub async fn enter_owed(&self, work: Work, key: &str) -> GatePermit {
        loop {
            // An unbounded entry cannot be refused; the loop only satisfies
            // the type.
            if let Ok(p) = self.gate(work).enter_unbounded(key).await {
                return p;
            }
        }
    }

    /// `(gate name, running, queued)` of every gate, for `/metrics`.
    pub fn load(&self) -> [(&'static str, usize, usize); 4] {
        [
            &self.initial_sync,
            &self.large_messages,
            &self.room_state,
            &self.state_resolution,
        ]
        .map(|g| {
            let (r, q) = g.load();
            (g.name(), r, q)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::block_on;

    #[test]
    fn defaults_validate_and_zero_caps_do_not() {
        assert!(AdmissionSection::default().validate().is_ok());
        let zero = AdmissionSection {
            initial_syncs: 0,
            ..Default::default()
        };
        assert_eq!(zero.validate().unwrap_err().0, "admission.initial_syncs");
    }

    #[test]
    fn a_turn_that_does_not_come_in_time_is_refused() {
        block_on(async {
            let a = Admission::new(&AdmissionSection {
                initial_syncs: 1,
                queue_timeout_ms: 20,
                ..Default::default()
            });
            let held = a.enter(Work::InitialSync, "@a:x").await.unwrap();
            let e = a.enter(Work::InitialSync, "@b:x").await.unwrap_err();
            assert!(matches!(
                e,
                Overloaded::TimedOut {
                    gate: "initial_sync",
                    ..
                }
            ));
            // Other gates are independent.
            drop(a.enter(Work::RoomState, "@b:x").await.unwrap());
            drop(held);
            drop(a.enter(Work::InitialSync, "@b:x").await.unwrap());
        });
    }

    #[test]
    fn switched_off_nothing_waits_and_no_page_is_large() {
        block_on(async {
            let a = Admission::new(&AdmissionSection {
                enabled: false,
                initial_syncs: 1,
                ..Default::default()
            });
            let p1 = a.enter(Work::InitialSync, "@a:x").await.unwrap();
            let p2 = a.enter(Work::InitialSync, "@a:x").await.unwrap();
            assert!(!a.is_large_page(1000));
            drop((p1, p2));
        });
    }
}
