//! Shard-local shutdown signal and connection tracking.
//!
//! Everything here lives on one shard (single-threaded monoio runtime), so it
//! is built on `Rc`/`Cell` and plain wakers: no atomics, no `Send`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A list of parked tasks. Each waiting future owns a slot and frees it when
/// dropped, so futures created and dropped repeatedly (as in a `select!`
/// inside a keep-alive loop) never make the list grow.
#[derive(Default)]
pub(crate) struct WaiterList {
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl WaiterList {
    fn register(&self, key: &mut Option<usize>, waker: &Waker) {
        let mut slots = self.slots.borrow_mut();
        match *key {
            Some(k) => match &mut slots[k] {
                Some(w) if w.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            },
            None => {
                let k = match self.free.borrow_mut().pop() {
                    Some(k) => {
                        slots[k] = Some(waker.clone());
                        k
                    }
                    None => {
                        slots.push(Some(waker.clone()));
                        slots.len() - 1
                    }
                };
                *key = Some(k);
            }
        }
    }

    fn remove(&self, key: usize) {
        self.slots.borrow_mut()[key] = None;
        self.free.borrow_mut().push(key);
    }

    /// Wakes every parked task. Wakers are collected first so no borrow is
    /// held while waking.
    pub(crate) fn wake_all(&self) {
        let wakers: Vec<Waker> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once `cond()` is true; re-checked each time the list is woken.
    pub(crate) fn wait_until<F: Fn() -> bool + Unpin>(&self, cond: F) -> WaitUntil<'_, F> {
        WaitUntil {
            list: self,
            key: None,
            cond,
        }
    }
}

pub(crate) struct WaitUntil<'a, F> {
    list: &'a WaiterList,
    key: Option<usize>,
    cond: F,
}

impl<F: Fn() -> bool + Unpin> Future for WaitUntil<'_, F> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if (this.cond)() {
            return Poll::Ready(());
        }
        this.list.register(&mut this.key, cx.waker());
        Poll::Pending
    }
}

impl<F> Drop for WaitUntil<'_, F> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.list.remove(k);
        }
    }
}

#[derive(Default)]
struct ShutdownInner {
    triggered: Cell<bool>,
    waiters: WaiterList,
}

/// Shard-local, one-shot shutdown signal. Cloning shares the signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Rc<ShutdownInner>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal (idempotent) and wakes everyone waiting on it.
    pub fn trigger(&self) {
        if !self.inner.triggered.replace(true) {
            self.inner.waiters.wake_all();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub async fn wait(&self) {
        let inner = &self.inner;
        inner.waiters.wait_until(|| inner.triggered.get()).await
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .finish()
    }
}

/// Counts a shard's open connections so `serve` can enforce the cap and wait
/// for them to drain on shutdown.
#[derive(Default)]
pub(crate) struct ConnTracker {
    active: Cell<usize>,
    drained: WaiterList,
}

impl ConnTracker {
    pub(crate) fn active(&self) -> usize {
        self.active.get()
    }

    /// Registers a connection; dropping the guard unregisters it.
    pub(crate) fn enter(self: &Rc<Self>) -> ConnGuard {
        self.active.set(self.active.get() + 1);
        ConnGuard {
            tracker: Rc::clone(self),
        }
    }

    /// Resolves when no connection is open.
    pub(crate) async fn drained(&self) {
        self.drained.wait_until(|| self.active.get() == 0).await
    }
}

pub(crate) struct ConnGuard {
    tracker: Rc<ConnTracker>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let t = &self.tracker;
        t.active.set(t.active.get().saturating_sub(1));
        if t.active.get() == 0 {
            t.drained.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountWaker(AtomicUsize);
    impl Wake for CountWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future>(f: Pin<&mut F>, w: &Waker) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(w))
    }

    #[test]
    fn shutdown_wakes_waiters_and_slots_are_reused() {
        let s = Shutdown::new();
        let cw = Arc::new(CountWaker(AtomicUsize::new(0)));
        let waker = Waker::from(cw.clone());
        for _ in 0..100 {
            let mut f = std::pin::pin!(s.wait());
            assert!(poll_once(f.as_mut(), &waker).is_pending());
        }
        // Dropped futures freed their slots: the list did not grow.
        assert_eq!(s.inner.waiters.slots.borrow().len(), 1);
        let mut f = std::pin::pin!(s.wait());
        assert!(poll_once(f.as_mut(), &waker).is_pending());
        s.trigger();
        assert_eq!(cw.0.load(Ordering::SeqCst), 1);
        assert!(poll_once(f.as_mut(), &waker).is_ready());
        assert!(s.is_triggered());
    }

    #[test]
    fn tracker_drains() {
        let t = Rc::new(ConnTracker::default());
        let g1 = t.enter();
        let g2 = t.enter();
        assert_eq!(t.active(), 2);
        let cw = Arc::new(CountWaker(AtomicUsize::new(0)));
        let waker = Waker::from(cw.clone());
        let mut f = std::pin::pin!(t.drained());
        assert!(poll_once(f.as_mut(), &waker).is_pending());
        drop(g1);
        assert_eq!(cw.0.load(Ordering::SeqCst), 0);
        drop(g2);
        assert_eq!(cw.0.load(Ordering::SeqCst), 1);
        assert!(poll_once(f.as_mut(), &waker).is_ready());
    }
}
