//! A small pool of plain OS threads for CPU-heavy or blocking work (password
//! hashing), so it never runs on a shard.
//!
//! A job's result travels back through a one-shot slot whose waker is fired
//! from the pool thread; monoio's `sync` feature turns that into "queue the
//! task and unpark the shard's runtime", so a waiting shard costs no CPU.
//! The queue is bounded: when it is full, [`spawn`] fails at once with
//! [`BlockingError::Busy`] (callers answer 429) instead of queueing
//! unbounded work behind a flood of logins.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// Jobs queued before [`spawn`] refuses more.
const QUEUE_CAPACITY: usize = 1024;
/// Threads of the process-wide pool, at most.
const MAX_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BlockingError {
    /// The queue is full: shed load.
    #[error("blocking pool is busy")]
    Busy,
    /// The job panicked or was dropped unrun (pool gone).
    #[error("blocking job failed")]
    Failed,
}

/// A fixed set of worker threads sharing one bounded queue.
pub struct BlockingPool {
    tx: SyncSender<Job>,
}

impl BlockingPool {
    /// Start `threads` workers (at least one), named `hearth-blocking-N`.
    pub fn new(threads: usize, capacity: usize) -> std::io::Result<BlockingPool> {
        let (tx, rx) = mpsc::sync_channel::<Job>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("hearth-blocking-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(BlockingPool { tx })
    }

    /// Run `f` on a pool thread; the returned future resolves with its
    /// result. Dropping the future does not cancel the job.
    pub fn spawn<F, T>(&self, f: F) -> Result<BlockingTask<T>, BlockingError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let slot = Arc::new(Slot {
            value: Mutex::new(None),
            waker: AtomicWaker::new(),
        });
        let guard = Completion(slot.clone());
        let job: Job = Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f)).map_err(|_| BlockingError::Failed);
            guard.complete(out);
        });
        match self.tx.try_send(job) {
            Ok(()) => Ok(BlockingTask { slot }),
            Err(TrySendError::Full(_)) => Err(BlockingError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(BlockingError::Failed),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // Holding the lock only while waiting for the next job; a poisoned
        // lock means another worker panicked outside a job (cannot happen:
        // jobs catch their panics), so stop this worker too.
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // pool dropped
        }
    }
}

struct Slot<T> {
    value: Mutex<Option<Result<T, BlockingError>>>,
    waker: AtomicWaker,
}

/// Delivers the job's outcome exactly once; if the job is dropped unrun
/// (pool shutting down) it delivers `Failed`, so no waiter hangs.
struct Completion<T>(Arc<Slot<T>>);

impl<T> Completion<T> {
    fn complete(self, out: Result<T, BlockingError>) {
        if let Ok(mut v) = self.0.value.lock() {
            *v = Some(out);
        }
        // Drop runs next and wakes; nothing else to do.
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        if let Ok(mut v) = self.0.value.lock() {
            if v.is_none() {
                *v = Some(Err(BlockingError::Failed));
            }
        }
        self.0.waker.wake();
    }
}

/// The future of a job's result.
pub struct BlockingTask<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Future for BlockingTask<T> {
    type Output = Result<T, BlockingError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Register first, then check: a completion between the two wakes us.
        self.slot.waker.register(cx.waker());
        let taken = match self.slot.value.lock() {
            Ok(mut v) => v.take(),
            Err(_) => Some(Err(BlockingError::Failed)),
        };
        match taken {
            Some(out) => Poll::Ready(out),
            None => Poll::Pending,
        }
    }
}

/// The process-wide pool (started on first use).
pub fn global() -> Result<&'static BlockingPool, BlockingError> {
    static POOL: OnceLock<Option<BlockingPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_THREADS);
        match BlockingPool::new(n, QUEUE_CAPACITY) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the blocking pool");
                None
            }
        }
    })
    .as_ref()
    .ok_or(BlockingError::Failed)
}

/// Run `f` on the process-wide pool and await its result.
pub async fn run<F, T>(f: F) -> Result<T, BlockingError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    global()?.spawn(f)?.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn block_on<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn runs_off_the_calling_thread() {
        let here = std::thread::current().id();
        let (there, name) = block_on(run(|| {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_owned))
        }))
        .unwrap();
        assert_ne!(here, there);
        assert!(name.unwrap().starts_with("hearth-blocking-"));
    }

    #[test]
    fn waker_from_pool_thread_wakes_a_parked_runtime() {
        // The job waits until the runtime has certainly parked on the future.
        let pool = BlockingPool::new(1, 4).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        let task = pool
            .spawn(move || {
                g.wait();
                42
            })
            .unwrap();
        let releaser = std::thread::spawn(move || gate.wait());
        assert_eq!(block_on(task), Ok(42));
        releaser.join().unwrap();
    }

    #[test]
    fn full_queue_is_busy_and_panics_are_errors() {
        let pool = BlockingPool::new(1, 1).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let g = gate.clone();
        // The first job occupies the worker; then fill the one queue slot
        // (the worker may not have taken the first job yet, so push until
        // Busy: at most 2 more).
        let first = pool.spawn(move || g.wait()).unwrap();
        let mut extra = Vec::new();
        let mut busy = false;
        for _ in 0..3 {
            match pool.spawn(|| ()) {
                Ok(t) => extra.push(t),
                Err(e) => {
                    assert_eq!(e, BlockingError::Busy);
                    busy = true;
                    break;
                }
            }
        }
        assert!(busy);
        gate.wait();
        block_on(async {
            first.await.unwrap();
            for t in extra {
                t.await.unwrap();
            }
        });
        let t = pool.spawn(|| -> u32 { panic!("boom") }).unwrap();
        assert_eq!(block_on(t), Err(BlockingError::Failed));
    }
}
