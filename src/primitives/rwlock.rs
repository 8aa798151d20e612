//! Keyed read/write lock (Synapse's `ReadWriteLock`): many readers or one
//! writer per key. Strict FIFO: once a writer queues, later readers queue
//! behind it, so writers are never starved. Cancelled waiters leave the queue
//! (or pass on a slot they were already handed). Idle keys are removed.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::linearizer::Waiter;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Read,
    Write,
}

#[derive(Default)]
struct KeyState {
    readers: usize,
    writer: bool,
    queue: VecDeque<(Mode, Rc<Waiter>)>,
}

impl KeyState {
    fn idle(&self) -> bool {
        self.readers == 0 && !self.writer && self.queue.is_empty()
    }

    /// Grant slots from the front of the queue while compatible.
    fn dispatch(&mut self, wake: &mut Vec<Waker>) {
        while let Some((mode, _)) = self.queue.front() {
            let ok = match mode {
                Mode::Read => !self.writer,
                Mode::Write => !self.writer && self.readers == 0,
            };
            if !ok {
                break;
            }
            let Some((mode, w)) = self.queue.pop_front() else {
                break;
            };
            match mode {
                Mode::Read => self.readers += 1,
                Mode::Write => self.writer = true,
            }
            wake.extend(w.grant());
        }
    }
}

struct Inner<K> {
    keys: RefCell<HashMap<K, KeyState>>,
}

impl<K: Hash + Eq> Inner<K> {
    /// Run `f` on the key's state, then dispatch, drop idle keys, and wake.
    fn update(&self, key: &K, f: impl FnOnce(&mut KeyState)) {
        let mut wake = Vec::new();
        {
            let mut keys = self.keys.borrow_mut();
            if let Some(st) = keys.get_mut(key) {
                f(st);
                st.dispatch(&mut wake);
                if st.idle() {
                    keys.remove(key);
                }
            }
        }
        for w in wake {
            w.wake();
        }
    }

    fn release(&self, key: &K, mode: Mode) {
        self.update(key, |st| match mode {
            Mode::Read => st.readers = st.readers.saturating_sub(1),
            Mode::Write => st.writer = false,
        });
    }
}

/// A keyed read/write lock. Cheap to clone (shared).
pub struct ReadWriteLock<K> {
    inner: Rc<Inner<K>>,
}

impl<K> Clone for ReadWriteLock<K> {
    fn clone(&self) -> Self {
        ReadWriteLock {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> Default for ReadWriteLock<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> ReadWriteLock<K> {
    pub fn new() -> Self {
        ReadWriteLock {
            inner: Rc::new(Inner {
                keys: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// Shared access to `key`.
    pub fn read(&self, key: K) -> RwAcquire<K> {
        self.acquire(key, Mode::Read)
    }

    /// Exclusive access to `key`.
    pub fn write(&self, key: K) -> RwAcquire<K> {
        self.acquire(key, Mode::Write)
    }

    fn acquire(&self, key: K, mode: Mode) -> RwAcquire<K> {
        RwAcquire {
            inner: self.inner.clone(),
            key: Some(key),
            mode,
            waiter: None,
        }
    }

    /// Keys with holders or waiters.
    pub fn active_keys(&self) -> usize {
        self.inner.keys.borrow().len()
    }

    /// `(readers, writer held, waiters)` for `key`.
    pub fn key_state(&self, key: &K) -> (usize, bool, usize) {
        self.inner
            .keys
            .borrow()
            .get(key)
            .map_or((0, false, 0), |s| (s.readers, s.writer, s.queue.len()))
    }
}

/// Future returned by [`ReadWriteLock::read`] / [`ReadWriteLock::write`].
pub struct RwAcquire<K: Hash + Eq> {
    inner: Rc<Inner<K>>,
    key: Option<K>,
    mode: Mode,
    waiter: Option<Rc<Waiter>>,
}

// Never pin-projected: the key is only moved out by value.
impl<K: Hash + Eq> Unpin for RwAcquire<K> {}

impl<K: Hash + Eq + Clone> Future for RwAcquire<K> {
    type Output = RwGuard<K>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RwGuard<K>> {
        let this = self.get_mut(); // Unpin: no self-references
        if let Some(w) = &this.waiter {
            if !w.granted.get() {
                w.set_waker(cx.waker());
                return Poll::Pending;
            }
        } else {
            let Some(key) = this.key.as_ref() else {
                return Poll::Pending; // polled after completion: stay inert
            };
            let mut keys = this.inner.keys.borrow_mut();
            let st = keys.entry(key.clone()).or_default();
            let free = st.queue.is_empty()
                && match this.mode {
                    Mode::Read => !st.writer,
                    Mode::Write => !st.writer && st.readers == 0,
                };
            if free {
                match this.mode {
                    Mode::Read => st.readers += 1,
                    Mode::Write => st.writer = true,
                }
            } else {
                let w = Waiter::new(cx.waker());
                st.queue.push_back((this.mode, w.clone()));
                drop(keys);
                this.waiter = Some(w);
                return Poll::Pending;
            }
        }
        this.waiter = None;
        Poll::Ready(RwGuard {
            inner: this.inner.clone(),
            key: this.key.take(),
            mode: this.mode,
        })
    }
}

impl<K: Hash + Eq> Drop for RwAcquire<K> {
    fn drop(&mut self) {
        let (Some(w), Some(key)) = (self.waiter.take(), self.key.as_ref()) else {
            return;
        };
        if w.granted.get() {
            self.inner.release(key, self.mode);
        } else {
            // Leaving the queue may unblock readers queued behind us.
            self.inner
                .update(key, |st| st.queue.retain(|(_, q)| !Rc::ptr_eq(q, &w)));
        }
    }
}

/// A held read or write slot; released on drop.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RwGuard<K: Hash + Eq> {
    inner: Rc<Inner<K>>,
    key: Option<K>,
    mode: Mode,
}

impl<K: Hash + Eq> RwGuard<K> {
    pub fn is_write(&self) -> bool {
        self.mode == Mode::Write
    }
}

impl<K: Hash + Eq> Drop for RwGuard<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner.release(&key, self.mode);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::{block_on, settle};

    fn pending<F: Future + Unpin>(f: &mut F) -> impl Future<Output = bool> + '_ {
        std::future::poll_fn(move |cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_pending()))
    }

    #[test]
    fn many_readers_or_one_writer() {
        block_on(async {
            let l = ReadWriteLock::new();
            let r1 = l.read("k").await;
            let r2 = l.read("k").await;
            assert_eq!(l.key_state(&"k"), (2, false, 0));
            let mut w = l.write("k");
            assert!(pending(&mut w).await);
            drop(r1);
            assert!(pending(&mut w).await);
            drop(r2);
            let w = w.await;
            assert!(w.is_write());
            let mut r3 = l.read("k");
            assert!(pending(&mut r3).await);
            drop(w);
            let r3 = r3.await;
            drop(r3);
            assert_eq!(l.active_keys(), 0);
        });
    }

    #[test]
    fn queued_writer_blocks_later_readers() {
        block_on(async {
            let l = ReadWriteLock::new();
            let log = Rc::new(RefCell::new(Vec::new()));
            let r0 = l.read(1).await;
            let mut tasks = Vec::new();
            for (name, write) in [
                ("w1", true),
                ("r1", false),
                ("r2", false),
                ("w2", true),
                ("r3", false),
            ] {
                let (l, log) = (l.clone(), log.clone());
                tasks.push(monoio::spawn(async move {
                    let g = if write {
                        l.write(1).await
                    } else {
                        l.read(1).await
                    };
                    log.borrow_mut().push(format!("+{name}"));
                    crate::primitives::clock::test_util::yield_now().await;
                    log.borrow_mut().push(format!("-{name}"));
                    drop(g);
                }));
            }
            settle().await;
            // The writer queued behind r0; the readers queue behind the writer.
            assert_eq!(l.key_state(&1), (1, false, 5));
            drop(r0);
            for t in tasks {
                t.await;
            }
            let log = log.borrow().join(" ");
            assert_eq!(log, "+w1 -w1 +r1 +r2 -r1 -r2 +w2 -w2 +r3 -r3");
            assert_eq!(l.active_keys(), 0);
        });
    }

    #[test]
    fn cancelled_writer_unblocks_readers_behind_it() {
        block_on(async {
            let l = ReadWriteLock::new();
            let r0 = l.read("k").await;
            let mut w = l.write("k");
            assert!(pending(&mut w).await);
            let mut r1 = l.read("k");
            assert!(pending(&mut r1).await);
            drop(w);
            let r1 = r1.await; // admitted alongside r0
            assert_eq!(l.key_state(&"k"), (2, false, 0));
            // A writer granted but dropped before being polled passes it on.
            let mut w2 = l.write("k");
            assert!(pending(&mut w2).await);
            let mut r2 = l.read("k");
            assert!(pending(&mut r2).await);
            drop((r0, r1));
            assert_eq!(l.key_state(&"k"), (0, true, 1));
            drop(w2);
            drop(r2.await);
            assert_eq!(l.active_keys(), 0);
        });
    }
}
