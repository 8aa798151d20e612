//! Cooperative yielding on monoio.
//!
//! monoio re-queues a task that wakes itself while being polled at the
//! *front* of the run queue, so the usual "wake_by_ref + Pending" trick does
//! not let other tasks run. Here a helper task does the waking instead,
//! which puts us at the back of the queue.

use std::task::Poll;

/// Let every other runnable task on this shard run once before continuing.
/// Must be called on a monoio runtime.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        let waker = cx.waker().clone();
        drop(monoio::spawn(async move { waker.wake() }));
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::block_on;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn yield_lets_others_run() {
        block_on(async {
            let ran = Rc::new(Cell::new(false));
            let r = ran.clone();
            drop(monoio::spawn(async move { r.set(true) }));
            yield_now().await;
            assert!(ran.get());
        });
    }
}
