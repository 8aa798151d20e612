//! Time as a capability: everything that waits or reads the time goes through
//! a [`ClockHandle`], so tests can drive time with [`FakeClock`] instead of
//! really sleeping.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Monotonic time, wall-clock time and sleeping, per shard.
pub trait Clock {
    /// Monotonic "now" (for deadlines, TTLs, timeouts).
    fn now(&self) -> Instant;
    /// Wall-clock milliseconds since the Unix epoch (Matrix `origin_server_ts`).
    fn now_ms(&self) -> u64;
    /// A future that completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// Wall-clock milliseconds since the Unix epoch, for code that stamps rows
/// and events and has no [`ClockHandle`] (the one free function for it;
/// code whose timing tests drive takes a `ClockHandle` instead).
pub fn unix_ms() -> u64 {
    RealClock.now_ms()
}

/// [`unix_ms`] for BIGINT columns (`*_ts`).
pub fn unix_ms_i64() -> i64 {
    i64::try_from(unix_ms()).unwrap_or(i64::MAX)
}

/// The handle every component holds: shard-local, cheap to clone.
pub type ClockHandle = Rc<dyn Clock>;

/// The real clock. `sleep` uses monoio's timer, so the runtime must be built
/// with `enable_timer()` (monoio panics otherwise).
#[derive(Debug, Default, Clone, Copy)]
pub struct RealClock;

impl RealClock {
    /// A ready-to-share handle.
    pub fn handle() -> ClockHandle {
        Rc::new(RealClock)
    }
}

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn now_ms(&self) -> u64 {
        // A clock before 1970 is a misconfigured host; report 0 rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(monoio::time::sleep(d))
    }
}

/// A clock that only moves when told to ([`FakeClock::advance`]).
///
/// Clones share the same time. Sleepers are kept ordered by
/// `(deadline, registration order)` and are woken in that order.
#[derive(Clone)]
pub struct FakeClock {
    inner: Rc<FakeInner>,
}

struct FakeInner {
    base: Instant,
    base_ms: u64,
    elapsed: Cell<Duration>,
    next_seq: Cell<u64>,
    sleepers: RefCell<BTreeMap<(Duration, u64), Waker>>,
}

impl FakeClock {
    /// A fake clock whose wall clock starts at `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        FakeClock {
            inner: Rc::new(FakeInner {
                base: Instant::now(),
                base_ms: start_ms,
                elapsed: Cell::new(Duration::ZERO),
                next_seq: Cell::new(0),
                sleepers: RefCell::new(BTreeMap::new()),
            }),
        }
    }

    /// This clock as a [`ClockHandle`] (shares time with `self`).
    pub fn handle(&self) -> ClockHandle {
        Rc::new(self.clone())
    }

    /// Time passed since the clock was created.
    pub fn elapsed(&self) -> Duration {
        self.inner.elapsed.get()
    }

    /// Move time forward by `d` and wake every sleeper whose deadline has
    /// passed, earliest deadline first. The woken tasks run when the executor
    /// next gets control (e.g. after the caller yields).
    pub fn advance(&self, d: Duration) {
        let now = self.inner.elapsed.get() + d;
        self.inner.elapsed.set(now);
        let due: Vec<Waker> = {
            let mut sleepers = self.inner.sleepers.borrow_mut();
            let later = sleepers.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *sleepers, later)
                .into_values()
                .collect()
        };
        // Wake outside the borrow: a waker may run code that touches the clock.
        for w in due {
            w.wake();
        }
    }

    /// Number of sleepers currently waiting (for tests).
    pub fn sleepers(&self) -> usize {
        self.inner.sleepers.borrow().len()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.inner.base + self.inner.elapsed.get()
    }

    fn now_ms(&self) -> u64 {
        let ms = u64::try_from(self.inner.elapsed.get().as_millis()).unwrap_or(u64::MAX);
        self.inner.base_ms.saturating_add(ms)
    }

    fn sleep(&self, d: Duration) -> Pin<Box<dyn Future<Output = ()>>> {
        let seq = self.inner.next_seq.get();
        self.inner.next_seq.set(seq + 1);
        Box::pin(FakeSleep {
            clock: self.inner.clone(),
            key: (self.inner.elapsed.get() + d, seq),
            registered: false,
        })
    }
}

struct FakeSleep {
    clock: Rc<FakeInner>,
    key: (Duration, u64),
    registered: bool,
}

impl Future for FakeSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.elapsed.get() >= self.key.0 {
            if self.registered {
                self.clock.sleepers.borrow_mut().remove(&self.key);
                self.registered = false;
            }
            return Poll::Ready(());
        }
        self.clock
            .sleepers
            .borrow_mut()
            .insert(self.key, cx.waker().clone());
        self.registered = true;
        Poll::Pending
    }
}

impl Drop for FakeSleep {
    fn drop(&mut self) {
        if self.registered {
            self.clock.sleepers.borrow_mut().remove(&self.key);
        }
    }
}

/// `timeout` gave up before the future finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct Elapsed;

/// Run `fut`, giving up after `d` on `clock`. The future is dropped on timeout.
pub async fn timeout<F: Future>(
    clock: &dyn Clock,
    d: Duration,
    fut: F,
) -> Result<F::Output, Elapsed> {
    let mut sleep = clock.sleep(d);
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::future::Future;

    /// A monoio runtime for tests (fusion driver, timers on).
    pub fn block_on<F: Future>(fut: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("test runtime") // test-only
            .block_on(fut)
    }

    /// Give every other ready task a chance to run (a few rounds).
    pub async fn settle() {
        for _ in 0..8 {
            yield_now().await;
        }
    }

    pub use crate::primitives::task::yield_now;
}

#[cfg(test)]
mod tests {
    use super::test_util::{block_on, settle};
    use super::*;

    #[test]
    fn fake_clock_times() {
        let c = FakeClock::new(1_000);
        let t0 = c.now();
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now() - t0, Duration::from_millis(1500));
        assert_eq!(c.now_ms(), 2_500);
    }

    #[test]
    fn sleepers_wake_in_deadline_order() {
        block_on(async {
            let clock = FakeClock::new(0);
            let order = Rc::new(RefCell::new(Vec::new()));
            for (i, ms) in [(0, 30u64), (1, 10), (2, 20), (3, 10), (4, 100)] {
                let s = clock.sleep(Duration::from_millis(ms));
                let order = order.clone();
                monoio::spawn(async move {
                    s.await;
                    order.borrow_mut().push(i);
                });
            }
            settle().await;
            assert_eq!(clock.sleepers(), 5);
            clock.advance(Duration::from_millis(25));
            settle().await;
            assert_eq!(*order.borrow(), vec![1, 3, 2]);
            clock.advance(Duration::from_millis(5));
            settle().await;
            assert_eq!(*order.borrow(), vec![1, 3, 2, 0]);
            assert_eq!(clock.sleepers(), 1);
        });
    }

    #[test]
    fn dropped_sleeper_unregisters() {
        block_on(async {
            let clock = FakeClock::new(0);
            let mut s = clock.sleep(Duration::from_secs(1));
            let polled = std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
            assert_eq!(clock.sleepers(), 1);
            drop(s);
            assert_eq!(clock.sleepers(), 0);
            // Zero-length sleep is immediately ready.
            clock.sleep(Duration::ZERO).await;
        });
    }

    #[test]
    fn timeout_fires_on_fake_time() {
        block_on(async {
            let clock = FakeClock::new(0);
            let h = clock.handle();
            let never = std::future::pending::<()>();
            let t = monoio::spawn(async move { timeout(&*h, Duration::from_secs(5), never).await });
            settle().await;
            clock.advance(Duration::from_secs(4));
            settle().await;
            clock.advance(Duration::from_secs(1));
            assert_eq!(t.await, Err(Elapsed));
            assert_eq!(
                timeout(&clock, Duration::from_secs(1), async { 7 }).await,
                Ok(7)
            );
        });
    }
}
