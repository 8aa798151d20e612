//! A shard's end of the mesh: `submit_to`, `broadcast`, the receive tasks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::future::join_all;

use super::ring::{reply_channel, Job, Ring};
use super::MeshError;

/// How many jobs a receive task starts before yielding to other tasks.
const RECV_BATCH: usize = 128;

/// Builds the mesh.
pub struct Mesh;

impl Mesh {
    /// One endpoint per shard, index = shard id; move each to its thread.
    /// `ring_capacity` (min 1) bounds each ordered pair's ring.
    #[allow(clippy::new_ret_no_self)] // a factory: the mesh *is* its endpoints
    pub fn new(n_shards: usize, ring_capacity: usize) -> Vec<MeshEndpoint> {
        // rings[from][to]; None on the diagonal (self-submits skip the ring).
        let rings: Vec<Vec<Option<Arc<Ring>>>> = (0..n_shards)
            .map(|from| {
                (0..n_shards)
                    .map(|to| (from != to).then(|| Arc::new(Ring::new(ring_capacity))))
                    .collect()
            })
            .collect();
        (0..n_shards)
            .map(|id| MeshEndpoint {
                id,
                n_shards,
                outbound: rings[id].clone(),
                inbound: (0..n_shards).map(|from| rings[from][id].clone()).collect(),
                gates: (0..n_shards)
                    .map(|_| RefCell::new(Gate::default()))
                    .collect(),
                closed: Cell::new(false),
                receiving: Cell::new(false),
                stats: Arc::new(MeshStats::default()),
            })
            .collect()
    }
}

/// Counters of one endpoint's receive side (for tests and metrics).
#[derive(Debug, Default)]
pub struct MeshStats {
    /// Times a receive task was polled to look for work. Close to the number
    /// of wake-ups; if this grew without messages the loop would be spinning.
    pub receiver_polls: AtomicU64,
    /// Jobs started on this shard from other shards.
    pub received: AtomicU64,
}

/// FIFO of local tasks waiting to push into one full outbound ring. Only the
/// head registers with the ring (one `AtomicWaker` slot); when it gets in it
/// wakes the next one, so later senders never overtake earlier ones.
#[derive(Default)]
struct Gate {
    waiters: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

/// One shard's end of the mesh. `Send` so it can be moved to its shard
/// thread; after that it is used only there (it is not `Sync`). Keep it in an
/// `Rc` or a thread-local to share among local tasks. Dropping it closes it.
pub struct MeshEndpoint {
    id: usize,
    n_shards: usize,
    outbound: Vec<Option<Arc<Ring>>>,
    inbound: Vec<Option<Arc<Ring>>>,
    gates: Vec<RefCell<Gate>>,
    closed: Cell<bool>,
    receiving: Cell<bool>,
    stats: Arc<MeshStats>,
}

/// Which shards a broadcast reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BroadcastScope {
    /// Every shard except the sender.
    Others,
    /// Every shard including the sender.
    All,
}

impl MeshEndpoint {
    pub fn shard_id(&self) -> usize {
        self.id
    }

    pub fn n_shards(&self) -> usize {
        self.n_shards
    }

    pub fn stats(&self) -> &MeshStats {
        &self.stats
    }

    /// Jobs queued in each ring from this shard, as `(target, queued,
    /// capacity)` (metrics; `ArrayQueue::len` reads two atomics, no lock).
    pub fn outbound_occupancy(&self) -> Vec<(usize, usize, usize)> {
        self.outbound
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.as_ref().map(|r| (t, r.queue.len(), r.queue.capacity())))
            .collect()
    }

    /// Start the receive side: one local task per inbound ring, each running
    /// arriving jobs as local tasks in arrival order. Call once, on this
    /// shard's runtime, after it has started; later calls do nothing.
    pub fn spawn_receiver(&self) {
        if self.receiving.replace(true) || self.closed.get() {
            return;
        }
        for ring in self.inbound.iter().flatten() {
            drop(monoio::spawn(receive_loop(
                ring.clone(),
                self.stats.clone(),
            )));
        }
    }

    /// Run `f` on shard `target` and return its output. `f` is sent, then
    /// called there; its future need not be `Send`. Waits (never drops,
    /// never spins) while the ring to `target` is full. To self: runs as a
    /// local task without the ring. Once enqueued, the job runs even if this
    /// future is dropped.
    pub async fn submit_to<F, Fut, T>(&self, target: usize, f: F) -> Result<T, MeshError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.check(target)?;
        if target == self.id {
            return Ok(monoio::spawn(async move { f().await }).await);
        }
        let (tx, rx) = reply_channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                tx.send(f().await);
            })
        });
        self.enqueue(target, job).await?;
        rx.await.map_err(|()| MeshError::Closed { shard: target })
    }

    /// Fire-and-forget `submit_to`: returns once the job is enqueued (with
    /// backpressure), not when it has run. Jobs from one shard to another
    /// start in the order they were enqueued. To self: spawned locally.
    pub async fn send_to<F, Fut>(&self, target: usize, f: F) -> Result<(), MeshError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
    {
        self.check(target)?;
        if target == self.id {
            drop(monoio::spawn(async move { f().await }));
            return Ok(());
        }
        let job: Job = Box::new(move || {
            Box::pin(async move {
                f().await;
            })
        });
        self.enqueue(target, job).await
    }

    /// Run `f()` on every shard in `scope`, returning once each job is
    /// enqueued (with backpressure), not when it has run. Every target is
    /// tried; the first failure is returned.
    pub async fn broadcast<F, Fut>(&self, scope: BroadcastScope, f: F) -> Result<(), MeshError>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future + 'static,
    {
        if self.closed.get() {
            return Err(MeshError::Closed { shard: self.id });
        }
        let f = Arc::new(f);
        let sends = self.targets(scope).map(|t| {
            let f = f.clone();
            async move {
                if t == self.id {
                    drop(monoio::spawn(async move { f().await }));
                    return Ok(());
                }
                let job: Job = Box::new(move || {
                    Box::pin(async move {
                        f().await;
                    })
                });
                self.enqueue(t, job).await
            }
        });
        join_all(sends).await.into_iter().collect()
    }

    /// Like [`broadcast`](Self::broadcast) but waits until every job has run,
    /// returning `(shard, result)` per target in shard order.
    pub async fn broadcast_wait<F, Fut, T>(
        &self,
        scope: BroadcastScope,
        f: F,
    ) -> Vec<(usize, Result<T, MeshError>)>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        let calls = self.targets(scope).map(|t| {
            let f = f.clone();
            async move { (t, self.submit_to(t, move || f()).await) }
        });
        join_all(calls).await
    }

    /// Close this endpoint: peers' pending and future submits to it fail
    /// with `Closed`, jobs queued for it are dropped unrun, its receive tasks
    /// end, and peers' receive tasks for its outbound rings end once drained.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        for ring in self.inbound.iter().flatten() {
            ring.close_rx();
        }
        for ring in self.outbound.iter().flatten() {
            ring.close_tx();
        }
        for gate in &self.gates {
            let waiters = std::mem::take(&mut gate.borrow_mut().waiters);
            for (_, w) in waiters {
                w.wake();
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn check(&self, target: usize) -> Result<(), MeshError> {
        if target >= self.n_shards {
            return Err(MeshError::NoSuchShard {
                shard: target,
                n_shards: self.n_shards,
            });
        }
        if self.closed.get() {
            return Err(MeshError::Closed { shard: self.id });
        }
        Ok(())
    }

    fn targets(&self, scope: BroadcastScope) -> impl Iterator<Item = usize> + '_ {
        (0..self.n_shards).filter(move |&t| scope == BroadcastScope::All || t != self.id)
    }

    /// Push `job` into the ring to `target`, waiting while it is full.
    fn enqueue(&self, target: usize, job: Job) -> Enqueue<'_> {
        Enqueue {
            ep: self,
            target,
            job: Some(job),
            ticket: None,
        }
    }
}

impl Drop for MeshEndpoint {
    fn drop(&mut self) {
        self.close();
    }
}

/// Future of one push into an outbound ring (see [`Gate`]).
struct Enqueue<'a> {
    ep: &'a MeshEndpoint,
    target: usize,
    job: Option<Job>,
    ticket: Option<u64>,
}

impl Enqueue<'_> {
    /// Leave the gate's queue; if we were its head, hand headship on.
    fn leave(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let next = {
            let mut gate = self.ep.gates[self.target].borrow_mut();
            let was_head = gate.waiters.front().is_some_and(|(t, _)| *t == ticket);
            gate.waiters.retain(|(t, _)| *t != ticket);
            if was_head {
                gate.waiters.front().map(|(_, w)| w.clone())
            } else {
                None
            }
        };
        if let Some(w) = next {
            w.wake();
        }
    }

    fn closed(&mut self) -> Poll<Result<(), MeshError>> {
        self.job = None;
        self.leave();
        let shard = if self.ep.closed.get() {
            self.ep.id
        } else {
            self.target
        };
        Poll::Ready(Err(MeshError::Closed { shard }))
    }

    fn pushed(&mut self, ring: &Ring) -> Poll<Result<(), MeshError>> {
        ring.rx_waker.wake();
        self.leave();
        // If the target closed meanwhile, our job may or may not have run
        // already; if not, this drops it (a `submit_to` then sees `Closed`
        // through its reply). Either way it was enqueued: Ok.
        ring.closed_after_push();
        Poll::Ready(Ok(()))
    }
}

impl Future for Enqueue<'_> {
    type Output = Result<(), MeshError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Invariant: `target` was checked, so not self and within range.
        let Some(ring) = this.ep.outbound[this.target].clone() else {
            return this.closed();
        };
        if this.ep.closed.get() || ring.rx_closed.load(Ordering::Acquire) {
            return this.closed();
        }
        {
            let mut gate = this.ep.gates[this.target].borrow_mut();
            match this.ticket {
                None if !gate.waiters.is_empty() => {
                    let t = gate.next_ticket;
                    gate.next_ticket += 1;
                    gate.waiters.push_back((t, cx.waker().clone()));
                    this.ticket = Some(t);
                    return Poll::Pending;
                }
                Some(t) if gate.waiters.front().is_none_or(|(h, _)| *h != t) => {
                    if let Some(slot) = gate.waiters.iter_mut().find(|(h, _)| *h == t) {
                        slot.1 = cx.waker().clone();
                    }
                    return Poll::Pending;
                }
                _ => {}
            }
        }
        // We are the head of the queue (or there is no queue).
        let Some(job) = this.job.take() else {
            return Poll::Pending; // polled after completion: stay inert
        };
        let job = match ring.queue.push(job) {
            Ok(()) => return this.pushed(&ring),
            Err(job) => job,
        };
        // Full: become (or stay) the head, register with the consumer, and
        // retry once in case it popped before we registered.
        if this.ticket.is_none() {
            let mut gate = this.ep.gates[this.target].borrow_mut();
            let t = gate.next_ticket;
            gate.next_ticket += 1;
            gate.waiters.push_back((t, cx.waker().clone()));
            this.ticket = Some(t);
        }
        ring.tx_waker.register(cx.waker());
        match ring.queue.push(job) {
            Ok(()) => this.pushed(&ring),
            Err(job) => {
                this.job = Some(job);
                if ring.rx_closed.load(Ordering::SeqCst) {
                    return this.closed();
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Enqueue<'_> {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Drains one inbound ring: starts each job as a local task, in order.
async fn receive_loop(ring: Arc<Ring>, stats: Arc<MeshStats>) {
    loop {
        let more = std::future::poll_fn(|cx| {
            stats.receiver_polls.fetch_add(1, Ordering::Relaxed);
            if ring.rx_closed.load(Ordering::Acquire) {
                return Poll::Ready(false);
            }
            if !ring.queue.is_empty() {
                return Poll::Ready(true);
            }
            ring.rx_waker.register(cx.waker());
            // Re-check after registering (the producer pushes, then wakes).
            if !ring.queue.is_empty() {
                return Poll::Ready(true);
            }
            if ring.tx_closed.load(Ordering::SeqCst) {
                // Producer gone; it pushed nothing after setting the flag.
                return Poll::Ready(!ring.queue.is_empty());
            }
            Poll::Pending
        })
        .await;
        if !more {
            ring.rx_waker.take();
            return;
        }
        let mut started = 0;
        while started < RECV_BATCH {
            let Some(job) = ring.queue.pop() else { break };
            let fut = job();
            drop(monoio::spawn(async move {
                let _running = crate::metrics::local::track(crate::metrics::local::Gauge::MeshJobs);
                fut.await
            }));
            started += 1;
        }
        stats.received.fetch_add(started as u64, Ordering::Relaxed);
        // Room was made: let a blocked producer in.
        ring.tx_waker.wake();
        if started == RECV_BATCH {
            crate::primitives::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::{block_on, settle};
    use std::rc::Rc;

    #[test]
    fn self_submit_runs_locally() {
        block_on(async {
            let mut eps = Mesh::new(1, 4);
            let ep = eps.pop().unwrap(); // n = 1: exactly one endpoint
            ep.spawn_receiver();
            assert_eq!((ep.shard_id(), ep.n_shards()), (0, 1));
            assert_eq!(ep.submit_to(0, || async { 41 + 1 }).await, Ok(42));
            thread_local!(static HITS: Cell<u32> = const { Cell::new(0) });
            ep.send_to(0, || async { HITS.with(|h| h.set(h.get() + 1)) })
                .await
                .unwrap();
            ep.broadcast(BroadcastScope::All, || async {
                HITS.with(|h| h.set(h.get() + 10))
            })
            .await
            .unwrap();
            ep.broadcast(BroadcastScope::Others, || async {
                HITS.with(|h| h.set(h.get() + 100))
            })
            .await
            .unwrap();
            settle().await;
            assert_eq!(HITS.with(|h| h.get()), 11);
            let r = ep.broadcast_wait(BroadcastScope::All, || async { 7 }).await;
            assert_eq!(r, vec![(0, Ok(7))]);
            let ep = Rc::new(ep);
            ep.close();
            assert!(ep.is_closed());
            assert_eq!(
                ep.submit_to(0, || async {}).await,
                Err(MeshError::Closed { shard: 0 })
            );
        });
    }
}
