//! Tiny shard-local (single-thread) async primitives used by the client:
//! a one-shot reply slot and a wake-up flag. `Rc`/`RefCell` only, since a
//! connection lives and dies on one shard.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

struct SlotInner<T> {
    value: Option<T>,
    waker: Option<Waker>,
    /// The receiving future was dropped: nobody wants the value.
    abandoned: bool,
    /// The sender was dropped without sending.
    sender_gone: bool,
}

/// Sending half of a one-shot reply.
pub(crate) struct Reply<T>(Rc<RefCell<SlotInner<T>>>);

/// Receiving half: a future resolving to `Some(value)`, or `None` when the
/// sender was dropped without answering.
pub(crate) struct Answer<T>(Rc<RefCell<SlotInner<T>>>);

pub(crate) fn oneshot<T>() -> (Reply<T>, Answer<T>) {
    let inner = Rc::new(RefCell::new(SlotInner {
        value: None,
        waker: None,
        abandoned: false,
        sender_gone: false,
    }));
    (Reply(inner.clone()), Answer(inner))
}

impl<T> Reply<T> {
    /// Deliver the value (dropped silently if the receiver is gone).
    pub(crate) fn send(self, value: T) {
        let waker = {
            let mut s = self.0.borrow_mut();
            if s.abandoned {
                return;
            }
            s.value = Some(value);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the receiver has given up waiting.
    #[cfg(test)]
    pub(crate) fn is_abandoned(&self) -> bool {
        self.0.borrow().abandoned
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        let waker = {
            let Ok(mut s) = self.0.try_borrow_mut() else {
                return;
            };
            s.sender_gone = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Answer<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.0.borrow_mut();
        if let Some(v) = s.value.take() {
            return Poll::Ready(Some(v));
        }
        if s.sender_gone {
            return Poll::Ready(None);
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Answer<T> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.try_borrow_mut() {
            s.abandoned = true;
            s.value = None;
        }
    }
}

/// A level-triggered wake-up flag with one waiting task (the writer task,
/// the group-commit task, …).
#[derive(Default)]
pub(crate) struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub(crate) fn notify(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Wait until notified since the last wait returned.
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified(self)
    }
}

pub(crate) struct Notified<'a>(&'a Notify);

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.replace(false) {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A set of waiting tasks woken together (waiters re-check their condition).
#[derive(Default)]
pub(crate) struct WaitList {
    wakers: RefCell<Vec<Waker>>,
}

impl WaitList {
    pub(crate) fn register(&self, w: &Waker) {
        let mut ws = self.wakers.borrow_mut();
        if !ws.iter().any(|x| x.will_wake(w)) {
            ws.push(w.clone());
        }
    }

    pub(crate) fn wake_all(&self) {
        let ws = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in ws {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn oneshot_delivers_and_detects_drop() {
        let (tx, rx) = oneshot::<u32>();
        tx.send(7);
        assert_eq!(rx.now_or_never(), Some(Some(7)));

        let (tx, rx) = oneshot::<u32>();
        drop(tx);
        assert_eq!(rx.now_or_never(), Some(None));

        let (tx, rx) = oneshot::<u32>();
        drop(rx);
        assert!(tx.is_abandoned());
        tx.send(1);
    }

    #[test]
    fn notify_is_level_triggered() {
        let n = Notify::default();
        assert!(n.notified().now_or_never().is_none());
        n.notify();
        n.notify();
        assert!(n.notified().now_or_never().is_some());
        assert!(n.notified().now_or_never().is_none());
    }
}
