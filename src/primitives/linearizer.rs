//! Keyed admission control: at most N holders per key, FIFO for the rest
//! (Synapse's `Linearizer`). Used e.g. to serialise event persistence per room.
//!
//! Slots are handed over directly from a releasing guard to the next waiter,
//! so a newcomer can never overtake the queue. A waiter that is dropped while
//! queued leaves the queue; one dropped after being handed a slot (but before
//! it was polled again) passes the slot on. Idle keys are removed.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A waiter's shared slot: set `granted` and wake to hand it the key.
pub(crate) struct Waiter {
    pub(crate) granted: Cell<bool>,
    pub(crate) waker: RefCell<Option<Waker>>,
}

impl Waiter {
    pub(crate) fn new(waker: &Waker) -> Rc<Self> {
        Rc::new(Waiter {
            granted: Cell::new(false),
            waker: RefCell::new(Some(waker.clone())),
        })
    }

    /// Mark granted and return the waker to fire once borrows are released.
    pub(crate) fn grant(&self) -> Option<Waker> {
        self.granted.set(true);
        self.waker.borrow_mut().take()
    }

    pub(crate) fn set_waker(&self, w: &Waker) {
        let mut slot = self.waker.borrow_mut();
        match &*slot {
            Some(old) if old.will_wake(w) => {}
            _ => *slot = Some(w.clone()),
        }
    }
}

struct KeyState {
    holders: usize,
    queue: VecDeque<Rc<Waiter>>,
}

struct Inner<K> {
    name: String,
    max_per_key: usize,
    keys: RefCell<HashMap<K, KeyState>>,
}

impl<K: Hash + Eq> Inner<K> {
    /// Give up one slot of `key`: hand it to the first waiter or free it.
    fn release(&self, key: &K) {
        let waker = {
            let mut keys = self.keys.borrow_mut();
            let Some(st) = keys.get_mut(key) else {
                return; // invariant: a holder's key exists; nothing to do otherwise
            };
            match st.queue.pop_front() {
                Some(w) => w.grant(),
                None => {
                    st.holders = st.holders.saturating_sub(1);
                    if st.holders == 0 {
                        keys.remove(key);
                    }
                    None
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Per-key concurrency limiter with FIFO fairness. Cheap to clone (shared).
pub struct Linearizer<K> {
    inner: Rc<Inner<K>>,
}

impl<K> Clone for Linearizer<K> {
    fn clone(&self) -> Self {
        Linearizer {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Linearizer<K> {
    /// `max_concurrency_per_key` of 0 is treated as 1.
    pub fn new(name: impl Into<String>, max_concurrency_per_key: usize) -> Self {
        Linearizer {
            inner: Rc::new(Inner {
                name: name.into(),
                max_per_key: max_concurrency_per_key.max(1),
                keys: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// The name given at construction (for logs and metrics).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Wait for a slot on `key`. The place in line is taken on first poll.
    pub fn queue(&self, key: K) -> Acquire<K> {
        Acquire {
            inner: self.inner.clone(),
            key: Some(key),
            waiter: None,
        }
    }

    /// Number of keys with holders or waiters (idle keys are removed).
    pub fn active_keys(&self) -> usize {
        self.inner.keys.borrow().len()
    }

    /// `(holders, waiters)` for `key`.
    pub fn key_state(&self, key: &K) -> (usize, usize) {
        self.inner
            .keys
            .borrow()
            .get(key)
            .map_or((0, 0), |s| (s.holders, s.queue.len()))
    }
}

/// Future returned by [`Linearizer::queue`].
pub struct Acquire<K: Hash + Eq> {
    inner: Rc<Inner<K>>,
    key: Option<K>,
    waiter: Option<Rc<Waiter>>,
}

// Never pin-projected: the key is only moved out by value.
impl<K: Hash + Eq> Unpin for Acquire<K> {}

impl<K: Hash + Eq + Clone> Future for Acquire<K> {
    type Output = LinearizerGuard<K>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<LinearizerGuard<K>> {
        // Acquire holds no self-references; Unpin is fine.
        let this = self.get_mut();
        let guard = |this: &mut Acquire<K>| {
            this.waiter = None;
            let key = this.key.take();
            LinearizerGuard {
                inner: this.inner.clone(),
                key,
            }
        };
        if let Some(w) = &this.waiter {
            if w.granted.get() {
                return Poll::Ready(guard(this));
            }
            w.set_waker(cx.waker());
            return Poll::Pending;
        }
        let Some(key) = this.key.as_ref() else {
            return Poll::Pending; // polled after completion: stay inert
        };
        let mut keys = this.inner.keys.borrow_mut();
        let st = keys.entry(key.clone()).or_insert_with(|| KeyState {
            holders: 0,
            queue: VecDeque::new(),
        });
        if st.holders < this.inner.max_per_key && st.queue.is_empty() {
            st.holders += 1;
            drop(keys);
            return Poll::Ready(guard(this));
        }
        let w = Waiter::new(cx.waker());
        st.queue.push_back(w.clone());
        drop(keys);
        this.waiter = Some(w);
        Poll::Pending
    }
}

impl<K: Hash + Eq> Drop for Acquire<K> {
    fn drop(&mut self) {
        let (Some(w), Some(key)) = (self.waiter.take(), self.key.as_ref()) else {
            return;
        };
        if w.granted.get() {
            // We were handed a slot but never took it: pass it on.
            self.inner.release(key);
            return;
        }
        let mut keys = self.inner.keys.borrow_mut();
        if let Some(st) = keys.get_mut(key) {
            st.queue.retain(|q| !Rc::ptr_eq(q, &w));
        }
    }
}

/// Holds one slot of a key; dropping it admits the next waiter.
#[must_use = "the slot is released as soon as the guard is dropped"]
pub struct LinearizerGuard<K: Hash + Eq> {
    inner: Rc<Inner<K>>,
    key: Option<K>,
}

impl<K: Hash + Eq> LinearizerGuard<K> {
    /// The key this guard holds.
    pub fn key(&self) -> Option<&K> {
        self.key.as_ref()
    }
}

impl<K: Hash + Eq> Drop for LinearizerGuard<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner.release(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::{block_on, settle};
    use crate::primitives::clock::{Clock, FakeClock};
    use std::time::Duration;

    #[test]
    fn fifo_and_limit_one() {
        block_on(async {
            let lin = Linearizer::new("test", 1);
            let clock = FakeClock::new(0);
            let log = Rc::new(RefCell::new(Vec::new()));
            let active = Rc::new(Cell::new(0usize));
            let mut handles = Vec::new();
            for i in 0..5 {
                let (lin, log, active, clock) =
                    (lin.clone(), log.clone(), active.clone(), clock.clone());
                handles.push(monoio::spawn(async move {
                    let _g = lin.queue("room").await;
                    active.set(active.get() + 1);
                    assert_eq!(active.get(), 1);
                    log.borrow_mut().push(i);
                    clock.sleep(Duration::from_millis(10)).await;
                    active.set(active.get() - 1);
                }));
            }
            for _ in 0..5 {
                settle().await;
                clock.advance(Duration::from_millis(10));
            }
            for h in handles {
                h.await;
            }
            assert_eq!(*log.borrow(), vec![0, 1, 2, 3, 4]);
            assert_eq!(lin.active_keys(), 0);
        });
    }

    #[test]
    fn concurrency_limit_n_and_independent_keys() {
        block_on(async {
            let lin = Linearizer::new("test", 2);
            let a1 = lin.queue(1).await;
            let a2 = lin.queue(1).await;
            let b1 = lin.queue(2).await; // other key unaffected
            let mut a3 = Box::pin(lin.queue(1));
            let p = std::future::poll_fn(|cx| Poll::Ready(a3.as_mut().poll(cx).is_pending())).await;
            assert!(p);
            assert_eq!(lin.key_state(&1), (2, 1));
            drop(a1);
            let a3 = a3.await;
            assert_eq!(lin.key_state(&1), (2, 0));
            drop((a2, a3, b1));
            assert_eq!(lin.active_keys(), 0);
        });
    }

    #[test]
    fn cancelled_waiters_do_not_leak() {
        block_on(async {
            let lin = Linearizer::new("test", 1);
            let g = lin.queue("k").await;
            // Queued then cancelled.
            let mut w1 = Box::pin(lin.queue("k"));
            let mut w2 = Box::pin(lin.queue("k"));
            std::future::poll_fn(|cx| {
                assert!(w1.as_mut().poll(cx).is_pending());
                assert!(w2.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
            let w3 = monoio::spawn({
                let lin = lin.clone();
                async move {
                    let _g = lin.queue("k").await;
                }
            });
            settle().await;
            assert_eq!(lin.key_state(&"k"), (1, 3));
            drop(w1);
            assert_eq!(lin.key_state(&"k"), (1, 2));
            // Granted-but-never-polled waiter passes the slot on.
            drop(g);
            assert_eq!(lin.key_state(&"k"), (1, 1));
            drop(w2);
            w3.await;
            assert_eq!(lin.active_keys(), 0);
        });
    }

    #[test]
    fn no_growth_over_many_keys() {
        block_on(async {
            let lin = Linearizer::new("test", 1);
            for i in 0..10_000u32 {
                let _g = lin.queue(i).await;
            }
            assert_eq!(lin.active_keys(), 0);
        });
    }
}
