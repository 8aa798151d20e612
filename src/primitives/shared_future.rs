//! One computation, many awaiters (Synapse's `ObservableDeferred`).
//!
//! **Choice:** the computation runs as its own local task (`monoio::spawn`),
//! not inside whichever awaiter happens to poll. So it always runs to
//! completion, even if every awaiter goes away (a cache load that a client
//! gave up on still fills the cache), and dropping one awaiter can never
//! disturb the others. The price: it must be created on a monoio runtime, and
//! the future must be `'static`. Errors are just values: use `T = Result<..>`
//! with a cloneable error (e.g. wrap it in `Rc`).
//!
//! If the task is dropped unfinished (only when the runtime itself is torn
//! down, at which point no awaiter can be polled either) awaiters stay pending.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

enum State<T> {
    Pending(HashMap<u64, Waker>),
    Done(T),
}

struct Shared<T> {
    state: RefCell<State<T>>,
    next_id: Cell<u64>,
}

impl<T> Shared<T> {
    fn complete(&self, value: T) {
        let old = std::mem::replace(&mut *self.state.borrow_mut(), State::Done(value));
        if let State::Pending(wakers) = old {
            for (_, w) in wakers {
                w.wake();
            }
        }
    }
}

/// A handle on a shared computation. Clones observe the same computation.
pub struct SharedFuture<T> {
    shared: Rc<Shared<T>>,
}

impl<T> Clone for SharedFuture<T> {
    fn clone(&self) -> Self {
        SharedFuture {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Clone + 'static> SharedFuture<T> {
    /// Start `fut` as a local task on the current monoio runtime.
    pub fn spawn<F>(fut: F) -> Self
    where
        F: Future<Output = T> + 'static,
    {
        let shared = Rc::new(Shared {
            state: RefCell::new(State::Pending(HashMap::new())),
            next_id: Cell::new(0),
        });
        let s = shared.clone();
        // Detached: monoio keeps running a task whose JoinHandle is dropped.
        drop(monoio::spawn(async move {
            let v = fut.await;
            s.complete(v);
        }));
        SharedFuture { shared }
    }

    /// An already-completed value.
    pub fn ready(value: T) -> Self {
        SharedFuture {
            shared: Rc::new(Shared {
                state: RefCell::new(State::Done(value)),
                next_id: Cell::new(0),
            }),
        }
    }

    /// A future resolving to (a clone of) the result. Dropping it only
    /// stops this awaiter.
    pub fn observe(&self) -> Observer<T> {
        let id = self.shared.next_id.get();
        self.shared.next_id.set(id + 1);
        Observer {
            shared: self.shared.clone(),
            id,
        }
    }

    /// The result, if the computation has finished.
    pub fn peek(&self) -> Option<T> {
        match &*self.shared.state.borrow() {
            State::Done(v) => Some(v.clone()),
            State::Pending(_) => None,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(&*self.shared.state.borrow(), State::Done(_))
    }

    /// Awaiters currently registered (polled and not yet done or dropped).
    pub fn waiting(&self) -> usize {
        match &*self.shared.state.borrow() {
            State::Pending(w) => w.len(),
            State::Done(_) => 0,
        }
    }
}

/// Future returned by [`SharedFuture::observe`].
pub struct Observer<T> {
    shared: Rc<Shared<T>>,
    id: u64,
}

impl<T: Clone> Future for Observer<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut *self.shared.state.borrow_mut() {
            State::Done(v) => Poll::Ready(v.clone()),
            State::Pending(wakers) => {
                match wakers.get_mut(&self.id) {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    Some(w) => *w = cx.waker().clone(),
                    None => {
                        wakers.insert(self.id, cx.waker().clone());
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Observer<T> {
    fn drop(&mut self) {
        if let State::Pending(w) = &mut *self.shared.state.borrow_mut() {
            w.remove(&self.id);
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
    fn many_awaiters_one_run() {
        block_on(async {
            let runs = Rc::new(Cell::new(0));
            let clock = FakeClock::new(0);
            let sf = {
                let (runs, clock) = (runs.clone(), clock.clone());
                SharedFuture::spawn(async move {
                    runs.set(runs.get() + 1);
                    clock.sleep(Duration::from_secs(1)).await;
                    Ok::<u32, Rc<String>>(42)
                })
            };
            let hs: Vec<_> = (0..10).map(|_| monoio::spawn(sf.observe())).collect();
            settle().await;
            assert_eq!(sf.waiting(), 10);
            assert!(sf.peek().is_none());
            clock.advance(Duration::from_secs(1));
            for h in hs {
                assert_eq!(h.await, Ok(42));
            }
            assert_eq!(runs.get(), 1);
            assert_eq!(sf.observe().await, Ok(42)); // late awaiter
        });
    }

    #[test]
    fn dropping_awaiters_does_not_cancel() {
        block_on(async {
            let clock = FakeClock::new(0);
            let c = clock.clone();
            let sf = SharedFuture::spawn(async move {
                c.sleep(Duration::from_secs(1)).await;
                Err::<u32, _>(Rc::new("boom".to_string()))
            });
            let a = monoio::spawn(sf.observe());
            let mut b = Box::pin(sf.observe());
            std::future::poll_fn(|cx| Poll::Ready(b.as_mut().poll(cx).is_pending())).await;
            settle().await;
            assert_eq!(sf.waiting(), 2);
            drop(b);
            assert_eq!(sf.waiting(), 1);
            clock.advance(Duration::from_secs(1));
            assert_eq!(a.await.unwrap_err().as_str(), "boom");
            // Even with no awaiter at all the computation completes.
            let c = clock.clone();
            let lone = SharedFuture::spawn(async move {
                c.sleep(Duration::from_secs(1)).await;
                5
            });
            settle().await;
            clock.advance(Duration::from_secs(1));
            settle().await;
            assert_eq!(lone.peek(), Some(5));
            assert_eq!(SharedFuture::ready(3).observe().await, 3);
        });
    }
}
