//! Inbound federation requests per origin server (Synapse's
//! `rc_federation`): over `sleep_limit` requests in a window, each further
//! one waits `sleep_delay`; at most `concurrent` run at once, the rest
//! queue in order; with `reject_limit` in progress (running, waiting or
//! queued) more are refused with 429. Shard-local, like the other hot-path
//! limiters: an origin whose connections land on `n` shards gets `n` times
//! the allowance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::config::FederationLimits;
use super::Limited;
use crate::primitives::linearizer::{Linearizer, LinearizerGuard};

#[derive(Debug, Default)]
struct Origin {
    window_start: Option<Instant>,
    in_window: u32,
    in_progress: u32,
}

struct Inner {
    cfg: FederationLimits,
    origins: RefCell<HashMap<Box<str>, Origin>>,
    slots: Linearizer<Box<str>>,
}

/// One shard's per-origin federation limiter; `None` inside when off.
pub struct OriginLimits(Option<Rc<Inner>>);

/// Held while a request is processed; dropping it admits the next one.
pub struct OriginPermit {
    _slot: Option<LinearizerGuard<Box<str>>>,
    _count: Option<InProgress>,
}

/// Counts a request as in progress from admission to drop (also while it
/// sleeps or queues, so a flood is refused rather than piling up).
struct InProgress {
    inner: Rc<Inner>,
    origin: Box<str>,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut map = self.inner.origins.borrow_mut();
        if let Some(o) = map.get_mut(&self.origin) {
            o.in_progress = o.in_progress.saturating_sub(1);
            let window = Duration::from_millis(self.inner.cfg.window_size_ms);
            let idle = o.window_start.is_none_or(|s| s.elapsed() >= window);
            if o.in_progress == 0 && idle {
                map.remove(&self.origin);
            }
        }
    }
}

impl OriginLimits {
    pub fn new(cfg: Option<&FederationLimits>) -> OriginLimits {
        OriginLimits(cfg.filter(|c| c.enabled).map(|c| {
            Rc::new(Inner {
                cfg: c.clone(),
                origins: RefCell::new(HashMap::new()),
                slots: Linearizer::new("federation origin", c.concurrent as usize),
            })
        }))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Admits a request of `origin` (after its signature checked out):
    /// refuses, delays or queues it as configured.
    pub async fn enter(&self, origin: &str) -> Result<OriginPermit, Limited> {
        let Some(inner) = &self.0 else {
            return Ok(OriginPermit {
                _slot: None,
                _count: None,
            });
        };
        let cfg = &inner.cfg;
        let delay = {
            let mut map = inner.origins.borrow_mut();
            let o = map.entry(origin.into()).or_default();
            if o.in_progress >= cfg.reject_limit {
                return Err(Limited {
                    retry_after_ms: cfg.window_size_ms,
                });
            }
            let now = Instant::now();
            let window = Duration::from_millis(cfg.window_size_ms);
            match o.window_start {
                Some(s) if now.saturating_duration_since(s) < window => o.in_window += 1,
                _ => {
                    o.window_start = Some(now);
                    o.in_window = 1;
                }
            }
            o.in_progress += 1;
            o.in_window > cfg.sleep_limit
        };
        let count = InProgress {
            inner: inner.clone(),
            origin: origin.into(),
        };
        if delay {
            monoio::time::sleep(Duration::from_millis(cfg.sleep_delay_ms)).await;
        }
        let slot = inner.slots.queue(origin.into()).await;
        Ok(OriginPermit {
            _slot: Some(slot),
            _count: Some(count),
        })
    }

    /// Origins tracked (for tests).
    pub fn tracked(&self) -> usize {
        self.0.as_ref().map_or(0, |i| i.origins.borrow().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    fn cfg() -> FederationLimits {
        FederationLimits {
            enabled: true,
            window_size_ms: 60_000,
            sleep_limit: 2,
            sleep_delay_ms: 50,
            reject_limit: 3,
            concurrent: 1,
        }
    }

    #[test]
    fn rejects_beyond_the_limit_in_progress() {
        run(async {
            let l = OriginLimits::new(Some(&cfg()));
            let a = l.enter("a.org").await.unwrap();
            // Queued behind `a` (concurrent = 1): counted while waiting.
            let b = l.enter("a.org");
            let c = l.enter("a.org");
            let mut b = Box::pin(b);
            let mut c = Box::pin(c);
            let waker = futures_noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(b.as_mut().poll(&mut cx).is_pending());
            assert!(c.as_mut().poll(&mut cx).is_pending());
            let e = l.enter("a.org").await.err().expect("rejected");
            assert_eq!(e.retry_after_ms, 60_000);
            // Other origins are independent.
            assert!(l.enter("b.org").await.is_ok());
            drop(a);
            drop(b);
            drop(c);
        });
    }

    #[test]
    fn delays_beyond_the_sleep_limit() {
        run(async {
            let mut c = cfg();
            c.concurrent = 10;
            c.reject_limit = 10;
            let l = OriginLimits::new(Some(&c));
            let t = Instant::now();
            let _a = l.enter("a.org").await.unwrap();
            let _b = l.enter("a.org").await.unwrap();
            assert!(t.elapsed() < Duration::from_millis(50));
            let _c = l.enter("a.org").await.unwrap();
            assert!(t.elapsed() >= Duration::from_millis(50));
        });
    }

    #[test]
    fn off_admits_everything_and_tracks_nothing() {
        run(async {
            let l = OriginLimits::new(None);
            let permits: Vec<_> = futures_all(&l, 100).await;
            assert_eq!(permits.len(), 100);
            assert_eq!(l.tracked(), 0);
        });
    }

    async fn futures_all(l: &OriginLimits, n: usize) -> Vec<OriginPermit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(l.enter("a.org").await.unwrap());
        }
        v
    }

    fn futures_noop_waker() -> std::task::Waker {
        std::task::Waker::noop().clone()
    }

    use std::future::Future;
}
