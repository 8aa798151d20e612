//! `Notify`: wake every task waiting for "something changed".
//!
//! Single-threaded (per shard). A waiter registers its waker under a key and
//! removes it when dropped, so a long-poll that times out leaves nothing
//! behind. Checking the condition and then awaiting `notified()` cannot miss
//! a wake-up on a shard: nothing else runs between the two.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
struct Inner {
    generation: Cell<u64>,
    next_key: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

/// A broadcast "changed" signal. Cloning shares it.
#[derive(Clone, Default)]
pub struct Notify {
    inner: Rc<Inner>,
}

impl Notify {
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wakes every current waiter.
    pub fn notify_all(&self) {
        let i = &self.inner;
        i.generation.set(i.generation.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *i.wakers.borrow_mut());
        for (_, w) in wakers {
            w.wake();
        }
    }

    /// Resolves at the next [`notify_all`](Self::notify_all) after this call.
    pub fn notified(&self) -> Notified {
        let key = self.inner.next_key.get();
        self.inner.next_key.set(key.wrapping_add(1));
        Notified {
            inner: self.inner.clone(),
            generation: self.inner.generation.get(),
            key,
        }
    }

    /// Number of registered waiters (for tests and stats).
    pub fn waiters(&self) -> usize {
        self.inner.wakers.borrow().len()
    }
}

/// Future of [`Notify::notified`].
pub struct Notified {
    inner: Rc<Inner>,
    generation: u64,
    key: u64,
}

impl Future for Notified {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.inner.generation.get() != self.generation {
            return Poll::Ready(());
        }
        self.inner
            .wakers
            .borrow_mut()
            .insert(self.key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        self.inner.wakers.borrow_mut().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_all_waiters_once_and_cleans_up() {
        let n = Notify::new();
        let count = std::sync::Arc::new(Count(Default::default()));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(n.notified());
        let mut b = Box::pin(n.notified());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(n.waiters(), 2);
        drop(b);
        assert_eq!(n.waiters(), 1, "a dropped waiter leaves nothing behind");
        n.notify_all();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        // A waiter created after the notification waits for the next one.
        let mut c = Box::pin(n.notified());
        assert!(c.as_mut().poll(&mut cx).is_pending());
    }
}
