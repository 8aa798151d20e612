//! Rate limiting (client-server API "Rate limiting"; Synapse's `rc_*`).
//!
//! Every shard has its own [`Limits`] in its `ShardState`: plain `RefCell`s,
//! no lock. Where a bucket is consulted decides how exact its limit is
//! (docs/DECISIONS.md, "Rate limits: where the buckets live"):
//! - login and registration buckets (per IP, per account, failed attempts)
//!   are consulted on the key's *owner shard* ([`check_on_owner`]), so they
//!   hold exactly whatever shard the connections land on; the mesh hop is
//!   nothing next to an argon2 hash;
//! - message, join and federation buckets are shard-local (hot paths): a
//!   client whose requests are spread over `n` shards gets at most `n` times
//!   the configured rate and burst.
//!
//! Domain errors only: the edge (`api/errors.rs`) turns [`Limited`] into 429
//! `M_LIMIT_EXCEEDED` with `retry_after_ms`.

mod bucket;
pub mod config;
mod origin;

use std::cell::RefCell;
use std::time::Instant;

pub use bucket::{Buckets, Rate};
pub use config::RateLimitSection;
pub use origin::{OriginLimits, OriginPermit};

use crate::mesh::{fnv1a64, jump_consistent_hash};
use crate::shard_state::{on_shard, Here, ShardState};

/// Refused by a rate limit; retrying after `retry_after_ms` can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after_ms} ms")]
pub struct Limited {
    pub retry_after_ms: u64,
}

/// What is being limited; each has its own buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// An event sent by a user (key: user id).
    Message,
    /// An account created from an IP (key: IP).
    Registration,
    /// A login attempt from an IP (key: IP).
    LoginAddress,
    /// A login attempt on an account (key: user id).
    LoginAccount,
    /// A failed login on an account (key: user id), whatever the IP.
    LoginFailed,
    /// A join of a room this server is in (key: user id).
    JoinLocal,
    /// A join over federation (key: user id).
    JoinRemote,
    /// A join of one room (key: room id).
    JoinRoom,
}

const ACTIONS: usize = 8;

/// One shard's buckets. `None` for a limiter that is switched off.
pub struct Limits {
    buckets: [Option<RefCell<Buckets>>; ACTIONS],
    pub federation: OriginLimits,
}

impl Limits {
    pub fn new(cfg: &RateLimitSection) -> Limits {
        use config::defaults as d;
        let on = cfg.enabled;
        let make = |l: &config::Limit, default: Rate| {
            on.then(|| l.rate(default))
                .flatten()
                .map(|r| RefCell::new(Buckets::new(r)))
        };
        Limits {
            buckets: [
                make(&cfg.message, d::MESSAGE),
                make(&cfg.registration, d::REGISTRATION),
                make(&cfg.login.address, d::LOGIN_ADDRESS),
                make(&cfg.login.account, d::LOGIN_ACCOUNT),
                make(&cfg.login.failed_attempts, d::LOGIN_FAILED),
                make(&cfg.joins.local, d::JOINS_LOCAL),
                make(&cfg.joins.remote, d::JOINS_REMOTE),
                make(&cfg.joins_per_room, d::JOINS_PER_ROOM),
            ],
            federation: OriginLimits::new(on.then_some(&cfg.federation)),
        }
    }

    /// Everything off (`rate_limits.enabled = false`).
    pub fn off() -> Limits {
        Limits::new(&RateLimitSection {
            enabled: false,
            ..RateLimitSection::default()
        })
    }

    fn slot(&self, a: Action) -> Option<&RefCell<Buckets>> {
        self.buckets[a as usize].as_ref()
    }

    /// Takes a token of `a` for `key` on this shard.
    pub fn take(&self, a: Action, key: &str) -> Result<(), Limited> {
        match self.slot(a) {
            None => Ok(()),
            Some(b) => b
                .borrow_mut()
                .take(key, Instant::now())
                .map_err(|retry_after_ms| Limited { retry_after_ms }),
        }
    }

    /// Whether `a` has a token for `key`, taking none.
    pub fn peek(&self, a: Action, key: &str) -> Result<(), Limited> {
        match self.slot(a) {
            None => Ok(()),
            Some(b) => b
                .borrow()
                .peek(key, Instant::now())
                .map_err(|retry_after_ms| Limited { retry_after_ms }),
        }
    }

    /// Counts an `a` for `key` that already happened (a failed login, an
    /// account created).
    pub fn record(&self, a: Action, key: &str) {
        if let Some(b) = self.slot(a) {
            b.borrow_mut().drain_one(key, Instant::now());
        }
    }

    /// Whether the limiter of `a` is on (callers skip the mesh hop if not).
    pub fn is_on(&self, a: Action) -> bool {
        self.slot(a).is_some()
    }
}

/// The shard that owns an arbitrary key's buckets (an IP, an account):
/// the same hash as users' and rooms' placement.
pub fn owner_shard(key: &str, n_shards: usize) -> usize {
    jump_consistent_hash(fnv1a64(key.as_bytes()), n_shards)
}

/// What to do with each bucket in one [`check_on_owner`] hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Take,
    Peek,
    Record,
}

/// Runs `ops` in order on the owner shard of `key` (first refusal wins;
/// later ops do not run). A mesh failure lets the request through: a
/// limiter must not turn a shard restart into refused logins.
pub async fn check_on_owner(
    state: &ShardState,
    key: &str,
    ops: &'static [(Op, Action)],
) -> Result<(), Limited> {
    if !ops.iter().any(|(_, a)| state.limits.is_on(*a)) {
        return Ok(());
    }
    let target = owner_shard(key, state.mesh.n_shards());
    let owned = key.to_owned();
    let run = move |st: std::rc::Rc<ShardState>| async move {
        for (op, a) in ops {
            match op {
                Op::Take => st.limits.take(*a, &owned)?,
                Op::Peek => st.limits.peek(*a, &owned)?,
                Op::Record => st.limits.record(*a, &owned),
            }
        }
        Ok::<(), Limited>(())
    };
    match on_shard(&state.mesh, target, Here::Inline, run).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "rate limit check skipped");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches() {
        let mut cfg = RateLimitSection::default();
        cfg.message.burst_count = Some(1);
        let l = Limits::new(&cfg);
        assert!(l.take(Action::Message, "@a:x").is_ok());
        let e = l.take(Action::Message, "@a:x").unwrap_err();
        // 1 / 0.2 per second.
        assert_eq!(e.retry_after_ms, 5000);
        assert!(l.take(Action::Message, "@b:x").is_ok());

        // One limiter off.
        cfg.message.enabled = false;
        let l = Limits::new(&cfg);
        for _ in 0..100 {
            assert!(l.take(Action::Message, "@a:x").is_ok());
        }
        assert!(l.is_on(Action::Registration));

        // All off, whatever each says.
        cfg.message.enabled = true;
        cfg.enabled = false;
        let l = Limits::new(&cfg);
        for a in [Action::Message, Action::LoginFailed, Action::JoinRoom] {
            assert!(!l.is_on(a));
        }
        assert!(!l.federation.is_on());
    }

    #[test]
    fn failed_logins_peek_then_record() {
        let mut cfg = RateLimitSection::default();
        cfg.login.failed_attempts.burst_count = Some(2);
        let l = Limits::new(&cfg);
        let acct = "@victim:x";
        for _ in 0..2 {
            assert!(l.peek(Action::LoginFailed, acct).is_ok());
            l.record(Action::LoginFailed, acct);
        }
        assert!(l.peek(Action::LoginFailed, acct).is_err());
        assert!(l.peek(Action::LoginFailed, "@other:x").is_ok());
    }
}
