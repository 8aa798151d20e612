//! The SPSC ring between one ordered pair of shards, and the one-shot reply
//! slot used by `submit_to`.
//!
//! Wake-up protocol (both directions use the same pattern, so no wake-up is
//! lost and nobody spins): the waiting side registers its waker in an
//! `AtomicWaker` and then re-checks the condition; the other side changes the
//! state first and calls `wake()` afterwards. A monoio waker fired from
//! another thread unparks that runtime (the `sync` feature), whichever driver
//! (io_uring or epoll) it is parked in.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

/// A unit of cross-shard work: builds its future on the target shard.
pub type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// One direction between two shards. Exactly one producer shard and one
/// consumer shard touch it (ArrayQueue is MPMC anyway, which lets either
/// side drain it on close).
pub(crate) struct Ring {
    pub(crate) queue: ArrayQueue<Job>,
    /// The consumer's receive task, parked while the ring is empty.
    pub(crate) rx_waker: AtomicWaker,
    /// The first blocked producer, parked while the ring is full.
    pub(crate) tx_waker: AtomicWaker,
    /// The consumer shard has closed: pushes fail, contents are dropped.
    pub(crate) rx_closed: AtomicBool,
    /// The producer shard has closed: the consumer stops once drained.
    pub(crate) tx_closed: AtomicBool,
}

impl Ring {
    pub(crate) fn new(capacity: usize) -> Self {
        Ring {
            queue: ArrayQueue::new(capacity.max(1)),
            rx_waker: AtomicWaker::new(),
            tx_waker: AtomicWaker::new(),
            rx_closed: AtomicBool::new(false),
            tx_closed: AtomicBool::new(false),
        }
    }

    /// Consumer side of close: refuse further pushes and drop what is
    /// queued (dropping a job drops its reply slot, which tells the sender
    /// `Closed`). Wakes a producer blocked on a full ring.
    pub(crate) fn close_rx(&self) {
        self.rx_closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.drain();
        self.tx_waker.wake();
        self.rx_waker.wake();
    }

    /// Producer side of close: the consumer may finish once drained.
    pub(crate) fn close_tx(&self) {
        self.tx_closed.store(true, Ordering::SeqCst);
        self.rx_waker.wake();
        self.tx_waker.take();
    }

    /// Producer, after a successful push: if the consumer closed meanwhile,
    /// nobody will pop what is left, so drop it ourselves. Returns whether
    /// the consumer had closed.
    /// Pairs with the store+fence in `close_rx` (Dekker-style: either we see
    /// the flag or its drain sees our job).
    pub(crate) fn closed_after_push(&self) -> bool {
        fence(Ordering::SeqCst);
        if self.rx_closed.load(Ordering::SeqCst) {
            self.drain();
            return true;
        }
        false
    }

    pub(crate) fn drain(&self) {
        while self.queue.pop().is_some() {}
    }
}

/// Create a one-shot reply channel (target shard → submitting shard).
pub(crate) fn reply_channel<T>() -> (ReplyTx<T>, ReplyRx<T>) {
    let inner = Arc::new(ReplyInner {
        slot: ArrayQueue::new(1),
        waker: AtomicWaker::new(),
        sender_gone: AtomicBool::new(false),
    });
    (ReplyTx(inner.clone()), ReplyRx(inner))
}

struct ReplyInner<T> {
    slot: ArrayQueue<T>,
    waker: AtomicWaker,
    sender_gone: AtomicBool,
}

pub(crate) struct ReplyTx<T>(Arc<ReplyInner<T>>);

impl<T> ReplyTx<T> {
    pub(crate) fn send(self, value: T) {
        // Capacity 1 and a single send (self is consumed): push cannot fail.
        let _ = self.0.slot.push(value);
        // Drop marks sender_gone and wakes the receiver.
    }
}

impl<T> Drop for ReplyTx<T> {
    fn drop(&mut self) {
        self.0.sender_gone.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

/// Resolves to the value, or `Err(())` if the job was dropped unrun.
pub(crate) struct ReplyRx<T>(Arc<ReplyInner<T>>);

impl<T> Future for ReplyRx<T> {
    type Output = Result<T, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, ()>> {
        if let Some(v) = self.0.slot.pop() {
            return Poll::Ready(Ok(v));
        }
        self.0.waker.register(cx.waker());
        if self.0.sender_gone.load(Ordering::Acquire) {
            // The value, if any, was pushed before the flag was set.
            return Poll::Ready(self.0.slot.pop().ok_or(()));
        }
        Poll::Pending
    }
}

impl<T> Drop for ReplyRx<T> {
    fn drop(&mut self) {
        // Don't leave our waker behind for the other thread to fire.
        self.0.waker.take();
    }
}
