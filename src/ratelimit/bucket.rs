//! Token buckets, one per key (user, IP, room, account).
//!
//! A bucket holds up to `burst` tokens and refills at `per_second`; an
//! action takes one token. That is Synapse's leaky-bucket ratelimiter seen
//! from the other side: `burst_count` actions at once, then one every
//! `1 / per_second` seconds. Time is passed in so the arithmetic is tested
//! without sleeping.

use std::collections::HashMap;
use std::time::Instant;

/// A rate: `burst` actions at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

impl Rate {
    /// Milliseconds until a bucket holding `tokens` has one whole token.
    fn wait_ms(&self, tokens: f64) -> u64 {
        let missing = (1.0 - tokens).max(0.0);
        ((missing / self.per_second) * 1000.0).ceil().max(1.0) as u64
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Tokens held at `now` (refilled since `last`, capped at `burst`).
    fn level(&self, rate: &Rate, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(rate.burst)
    }
}

/// The buckets of one limiter on one shard. Idle buckets (refilled to
/// `burst`) carry no information and are swept once the map doubles, so
/// memory stays proportional to the keys active within a refill period.
#[derive(Debug)]
pub struct Buckets {
    rate: Rate,
    map: HashMap<Box<str>, Bucket>,
    sweep_at: usize,
}

const MIN_SWEEP: usize = 1024;

impl Buckets {
    pub fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            map: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// Takes a token for `key`; `Err(ms)` is how long until one is there.
    pub fn take(&mut self, key: &str, now: Instant) -> Result<(), u64> {
        self.take_n(key, 1.0, now)
    }

    /// Whether `key` has a token, without taking it (`Err(ms)` as in
    /// [`Buckets::take`]): failed logins are checked before the password
    /// and counted only when it was wrong.
    pub fn peek(&self, key: &str, now: Instant) -> Result<(), u64> {
        match self.map.get(key) {
            None => Ok(()),
            Some(b) => {
                let level = b.level(&self.rate, now);
                if level >= 1.0 {
                    Ok(())
                } else {
                    Err(self.rate.wait_ms(level))
                }
            }
        }
    }

    /// Takes a token for `key` if there is one; an empty bucket stays
    /// empty rather than going into debt (a failed login is recorded after
    /// the fact, whatever the level).
    pub fn drain_one(&mut self, key: &str, now: Instant) {
        let rate = self.rate;
        let b = self.entry(key, now);
        b.tokens = (b.level(&rate, now) - 1.0).max(0.0);
        b.last = now;
    }

    fn take_n(&mut self, key: &str, n: f64, now: Instant) -> Result<(), u64> {
        let rate = self.rate;
        let b = self.entry(key, now);
        let level = b.level(&rate, now);
        if level >= n {
            b.tokens = level - n;
            b.last = now;
            Ok(())
        } else {
            Err(rate.wait_ms(level))
        }
    }

    fn entry(&mut self, key: &str, now: Instant) -> &mut Bucket {
        if self.map.len() >= self.sweep_at && !self.map.contains_key(key) {
            self.sweep(now);
        }
        let burst = self.rate.burst;
        self.map.entry(key.into()).or_insert(Bucket {
            tokens: burst,
            last: now,
        })
    }

    /// Drops full buckets; the next sweep waits until the map doubles.
    fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.map.retain(|_, b| b.level(&rate, now) < rate.burst);
        self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP);
    }

    /// Keys currently tracked (for tests).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rate(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rate(2.0, 3.0));
        for _ in 0..3 {
            assert_eq!(b.take("a", t0), Ok(()));
        }
        // Empty: one token needs 1/2 s.
        assert_eq!(b.take("a", t0), Err(500));
        // Other keys are independent.
        assert_eq!(b.take("b", t0), Ok(()));
        // Half refilled: 250 ms to go.
        assert_eq!(b.take("a", t0 + Duration::from_millis(250)), Err(250));
        assert_eq!(b.take("a", t0 + Duration::from_millis(500)), Ok(()));
        assert!(b.take("a", t0 + Duration::from_millis(500)).is_err());
        // Refill caps at the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take("a", later), Ok(()));
        }
        assert!(b.take("a", later).is_err());
    }

    #[test]
    fn slow_rates_give_long_waits() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rate(0.17, 1.0));
        assert_eq!(b.take("ip", t0), Ok(()));
        // 1 / 0.17 s, rounded up to the millisecond.
        assert_eq!(b.take("ip", t0), Err(5883));
    }

    #[test]
    fn peek_and_drain_for_failures() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rate(1.0, 2.0));
        assert_eq!(b.peek("acct", t0), Ok(()));
        assert!(b.is_empty(), "peeking creates no bucket");
        b.drain_one("acct", t0);
        assert_eq!(b.peek("acct", t0), Ok(()));
        b.drain_one("acct", t0);
        assert_eq!(b.peek("acct", t0), Err(1000));
        // Draining an empty bucket does not push it further into debt.
        b.drain_one("acct", t0);
        assert_eq!(b.peek("acct", t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn idle_buckets_are_swept() {
        let t0 = Instant::now();
        let mut b = Buckets::new(rate(1.0, 1.0));
        for i in 0..MIN_SWEEP {
            b.take(&format!("k{i}"), t0).unwrap();
        }
        assert_eq!(b.len(), MIN_SWEEP);
        // All refilled a second later: the next new key sweeps them.
        b.take("fresh", t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(b.len(), 1);
        // Busy buckets survive a sweep.
        let mut b = Buckets::new(rate(1.0, 1.0));
        for i in 0..MIN_SWEEP {
            b.take(&format!("k{i}"), t0).unwrap();
        }
        b.take("fresh", t0).unwrap();
        assert_eq!(b.len(), MIN_SWEEP + 1);
    }
}
