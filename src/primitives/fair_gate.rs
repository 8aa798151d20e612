//! A shard's admission gate for expensive work (initial syncs, large
//! `/messages`, whole-room state, big state resolutions): at most
//! `capacity` run at once, the rest wait in a bounded queue served
//! **round-robin by key** (a user, a room), so one client with fifty
//! initial syncs in flight delays itself, not everyone behind it.
//!
//! Why a gate and not a bigger machine: each of these builds its whole
//! answer in memory before the first byte goes out, so what they cost at
//! once is what they cost times how many run. Bounding how many run bounds
//! the peak (bench/RESULTS.md, "sync-burst").
//!
//! Slots pass directly from a releasing permit to the next waiter, so a
//! newcomer never overtakes the queue. A waiter dropped while queued leaves
//! the queue; one dropped after being handed a slot passes it on. A full
//! queue refuses at once ([`Full`]): the caller answers 503 with a retry
//! hint instead of piling up memory for requests it cannot serve soon.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::linearizer::Waiter;

/// The queue of a gate was full; the work was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{gate}: {queued} requests already queued")]
pub struct Full {
    pub gate: &'static str,
    pub queued: usize,
}

#[derive(Default)]
struct State {
    running: usize,
    queued: usize,
    /// Waiters by key, each key's in arrival order.
    waiting: HashMap<Box<str>, VecDeque<Rc<Waiter>>>,
    /// Keys with waiters, in turn order: the front key's first waiter is
    /// served next, and the key goes to the back if it has more.
    turns: VecDeque<Box<str>>,
}

struct Inner {
    name: &'static str,
    capacity: usize,
    max_queued: usize,
    st: RefCell<State>,
}

impl Inner {
    /// Gives up one slot: hands it to the next waiter in turn, or frees it.
    fn release(&self) {
        let waker = {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            let mut next = None;
            while let Some(key) = st.turns.pop_front() {
                let Some(q) = st.waiting.get_mut(&key) else {
                    continue; // invariant: a key in turns has waiters
                };
                let w = q.pop_front();
                if q.is_empty() {
                    st.waiting.remove(&key);
                } else {
                    st.turns.push_back(key);
                }
                if let Some(w) = w {
                    st.queued = st.queued.saturating_sub(1);
                    next = Some(w);
                    break;
                }
            }
            match next {
                Some(w) => w.grant(),
                None => {
                    st.running = st.running.saturating_sub(1);
                    None
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Per-shard concurrency cap with a fair, bounded queue. Cheap to clone.
#[derive(Clone)]
pub struct FairGate {
    inner: Rc<Inner>,
}

impl FairGate {
    /// `capacity` 0 is treated as 1; `usize::MAX` never queues.
    pub fn new(name: &'static str, capacity: usize, max_queued: usize) -> FairGate {
        FairGate {
            inner: Rc::new(Inner {
                name,
                capacity: capacity.max(1),
                max_queued,
                st: RefCell::new(State::default()),
            }),
        }
    }

    /// A gate that admits everything at once (admission switched off).
    pub fn open(name: &'static str) -> FairGate {
        FairGate::new(name, usize::MAX, usize::MAX)
    }

    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// `(running, queued)` now: for metrics and tests.
    pub fn load(&self) -> (usize, usize) {
        let st = self.inner.st.borrow();
        (st.running, st.queued)
    }

    /// Waits for a slot for `key`'s work, or fails at once with [`Full`]
    /// when the queue is full. The place in line is taken on first poll.
    pub fn enter(&self, key: &str) -> Enter {
        Enter {
            inner: self.inner.clone(),
            key: Some(key.into()),
            waiter: None,
            bounded: true,
        }
    }

    /// As [`enter`](Self::enter) but never refused: for work the server
    /// owes (a state resolution of an event it accepted), which must wait
    /// its turn rather than fail.
    pub fn enter_unbounded(&self, key: &str) -> Enter {
        let mut e = self.enter(key);
        e.bounded = false;
        e
    }
}

/// Future of [`FairGate::enter`].
pub struct Enter {
    inner: Rc<Inner>,
    key: Option<Box<str>>,
    waiter: Option<Rc<Waiter>>,
    bounded: bool,
}

impl Unpin for Enter {}

impl Future for Enter {
    type Output = Result<GatePermit, Full>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let permit = |this: &mut Enter| {
            this.waiter = None;
            this.key = None;
            GatePermit {
                inner: this.inner.clone(),
            }
        };
        if let Some(w) = &this.waiter {
            if w.granted.get() {
                return Poll::Ready(Ok(permit(this)));
            }
            w.set_waker(cx.waker());
            return Poll::Pending;
        }
        let Some(key) = this.key.as_ref() else {
            return Poll::Pending; // polled after completion: stay inert
        };
        let mut st = this.inner.st.borrow_mut();
        if st.running < this.inner.capacity && st.queued == 0 {
            st.running += 1;
            drop(st);
            return Poll::Ready(Ok(permit(this)));
        }
        if this.bounded && st.queued >= this.inner.max_queued {
            let full = Full {
                gate: this.inner.name,
                queued: st.queued,
            };
            drop(st);
            this.key = None;
            return Poll::Ready(Err(full));
        }
        let w = Waiter::new(cx.waker());
        let st = &mut *st;
        match st.waiting.get_mut(key) {
            Some(q) => q.push_back(w.clone()),
            None => {
                st.waiting.insert(key.clone(), VecDeque::from([w.clone()]));
                st.turns.push_back(key.clone());
            }
        }
        st.queued += 1;
        this.waiter = Some(w);
        Poll::Pending
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        let (Some(w), Some(key)) = (self.waiter.take(), self.key.take()) else {
            return;
        };
        if w.granted.get() {
            // Handed a slot but never took it: pass it on.
            self.inner.release();
            return;
        }
        let mut st = self.inner.st.borrow_mut();
        let st = &mut *st;
        if let Some(q) = st.waiting.get_mut(&key) {
            let before = q.len();
            q.retain(|x| !Rc::ptr_eq(x, &w));
            if q.len() < before {
                st.queued = st.queued.saturating_sub(1);
            }
            if q.is_empty() {
                st.waiting.remove(&key);
                st.turns.retain(|k| *k != key);
            }
        }
    }
}

/// One running slot; dropping it admits the next waiter.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct GatePermit {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for GatePermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatePermit")
            .field("gate", &self.inner.name)
            .finish()
    }
}

impl Drop for GatePermit {
    fn drop(&mut self) {
        self.inner.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::{block_on, settle};
    use std::cell::Cell;

    fn pending(f: &mut Pin<Box<Enter>>) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        f.as_mut().poll(&mut cx).is_pending()
    }

    #[test]
    fn at_most_capacity_run_and_permits_release_on_drop() {
        block_on(async {
            let g = FairGate::new("t", 2, 10);
            let a = g.enter("u").await.unwrap();
            let b = g.enter("v").await.unwrap();
            let mut c = Box::pin(g.enter("w"));
            assert!(pending(&mut c));
            assert_eq!(g.load(), (2, 1));
            drop(a);
            let c = c.await.unwrap();
            assert_eq!(g.load(), (2, 0));
            drop((b, c));
            assert_eq!(g.load(), (0, 0));
        });
    }

    #[test]
    fn a_full_queue_refuses_at_once_but_unbounded_entries_wait() {
        block_on(async {
            let g = FairGate::new("initial sync", 1, 1);
            let held = g.enter("u").await.unwrap();
            let mut q1 = Box::pin(g.enter("u"));
            assert!(pending(&mut q1));
            let e = g.enter("v").await.err().unwrap();
            assert_eq!(
                e,
                Full {
                    gate: "initial sync",
                    queued: 1
                }
            );
            let mut owed = Box::pin(g.enter_unbounded("room"));
            assert!(pending(&mut owed));
            assert_eq!(g.load(), (1, 2));
            drop(held);
            drop(q1.await.unwrap());
            drop(owed.await.unwrap());
            assert_eq!(g.load(), (0, 0));
        });
    }

    /// One key with many waiters gets one turn per round, not all of them
    /// before the others: the order is a, b, c, a, a (b and c arrived after
    /// a's three).
    #[test]
    fn keys_take_turns() {
        block_on(async {
            let g = FairGate::new("t", 1, 100);
            let held = g.enter("first").await.unwrap();
            let log = Rc::new(RefCell::new(Vec::new()));
            let mut tasks = Vec::new();
            for key in ["a", "a", "a", "b", "c"] {
                let (g, log) = (g.clone(), log.clone());
                tasks.push(monoio::spawn(async move {
                    let _p = g.enter(key).await.unwrap();
                    log.borrow_mut().push(key);
                    settle().await;
                }));
                settle().await;
            }
            assert_eq!(g.load(), (1, 5));
            drop(held);
            for t in tasks {
                t.await;
            }
            assert_eq!(*log.borrow(), vec!["a", "b", "c", "a", "a"]);
            assert_eq!(g.load(), (0, 0));
        });
    }

    #[test]
    fn cancelled_waiters_leave_and_granted_ones_pass_the_slot_on() {
        block_on(async {
            let g = FairGate::new("t", 1, 10);
            let held = g.enter("u").await.unwrap();
            let mut w1 = Box::pin(g.enter("u"));
            let mut w2 = Box::pin(g.enter("v"));
            assert!(pending(&mut w1) && pending(&mut w2));
            let ran = Rc::new(Cell::new(false));
            let w3 = monoio::spawn({
                let (g, ran) = (g.clone(), ran.clone());
                async move {
                    let _p = g.enter("w").await.unwrap();
                    ran.set(true);
                }
            });
            settle().await;
            assert_eq!(g.load(), (1, 3));
            drop(w1); // queued, cancelled
            assert_eq!(g.load(), (1, 2));
            drop(held); // w2 is granted but never polled again ...
            drop(w2); // ... and passes the slot to w3
            w3.await;
            assert!(ran.get());
            assert_eq!(g.load(), (0, 0));
        });
    }

    #[test]
    fn an_open_gate_never_queues() {
        block_on(async {
            let g = FairGate::open("t");
            let permits: Vec<_> = {
                let mut v = Vec::new();
                for _ in 0..1000 {
                    v.push(g.enter("u").await.unwrap());
                }
                v
            };
            assert_eq!(g.load(), (1000, 0));
            drop(permits);
            assert_eq!(g.load(), (0, 0));
        });
    }
}
