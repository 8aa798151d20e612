//! Shards: one pinned OS thread per core, each running its own single-threaded
//! monoio runtime.
//!
//! This module knows nothing of HTTP or Matrix: [`start`] runs a caller-given
//! async `main` on every shard, handing each its own payload (listeners, mesh
//! endpoint, …). Cross-thread stop requests arrive through [`StopSignal`],
//! whose waker unparks a runtime blocked in io_uring/epoll (monoio's `sync`
//! feature), so a parked shard needs no polling loop to notice.

pub mod allocator;
pub mod driver;
pub mod limits;
pub mod listener;
pub mod pin;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use crate::config::IoDriver;
pub use driver::DriverKind;

/// Facts about one running shard.
#[derive(Debug, Clone)]
pub struct ShardInfo {
    pub id: usize,
    pub count: usize,
    pub driver: DriverKind,
    pub core: Option<usize>,
    /// Why io_uring was not used, when `io_driver = "auto"` fell back.
    pub fallback_reason: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: cannot build its runtime: {source}")]
    Runtime {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {shard}: cannot start its thread: {source}")]
    Thread {
        shard: usize,
        source: std::io::Error,
    },
    #[error("shard {0} stopped before it was ready")]
    DiedEarly(usize),
}

/// How shards are started.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    pub io_driver: IoDriver,
    pub pin_cores: bool,
}

/// A one-shot, cross-thread "stop now" flag whose waiter runs on a shard.
#[derive(Default)]
pub struct StopSignal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl StopSignal {
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Resolves once [`raise`](Self::raise) has been called (from any thread).
    pub fn wait(self: &Arc<Self>) -> StopWait {
        StopWait(self.clone())
    }
}

pub struct StopWait(Arc<StopSignal>);

impl Future for StopWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.is_raised() {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        // Re-check after registering so a raise between the two is not lost.
        if self.0.is_raised() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What a shard's `main` receives.
pub struct ShardStart<P> {
    pub info: ShardInfo,
    pub stop: Arc<StopSignal>,
    pub payload: P,
}

/// The running shards, as seen from the main thread.
pub struct ShardSet {
    pub infos: Vec<ShardInfo>,
    stops: Vec<Arc<StopSignal>>,
    threads: Vec<JoinHandle<()>>,
}

impl ShardSet {
    /// Ask every shard to stop (graceful: their `main` decides how).
    pub fn stop_all(&self) {
        for s in &self.stops {
            s.raise();
        }
    }

    /// Wait for every shard thread to end, up to `deadline`. Returns whether
    /// all ended in time.
    pub fn join(self, deadline: Duration) -> bool {
        let until = Instant::now() + deadline;
        let mut all = true;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                if t.join().is_err() {
                    all = false;
                }
            } else {
                all = false;
            }
        }
        all
    }
}

/// Start one thread per payload, each pinned (if asked) and running
/// `main(ShardStart)` to completion on its own runtime. Returns once every
/// shard has built its runtime, so driver problems surface at start.
pub fn start<P, F, Fut>(
    payloads: Vec<P>,
    opts: &ShardOptions,
    main: F,
) -> Result<ShardSet, ShardError>
where
    P: Send + 'static,
    F: Fn(ShardStart<P>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let count = payloads.len();
    let cpus = pin::allowed_cpus();
    let main = Arc::new(main);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<ShardInfo, ShardError>>();
    let mut threads = Vec::with_capacity(count);
    let mut stops = Vec::with_capacity(count);

    for (id, payload) in payloads.into_iter().enumerate() {
        let stop = Arc::new(StopSignal::default());
        stops.push(stop.clone());
        let core = if opts.pin_cores {
            pin::core_for_shard(id, &cpus)
        } else {
            None
        };
        let io_driver = opts.io_driver;
        let main = main.clone();
        let ready_tx = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("shard-{id}"))
            .spawn(move || {
                let core = core.filter(|&c| match pin::pin_current_thread(c) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(shard = id, core = c, error = %e, "cannot pin shard to core");
                        false
                    }
                });
                let mut built = match driver::build_runtime(io_driver) {
                    Ok(b) => b,
                    Err(source) => {
                        let _ = ready_tx.send(Err(ShardError::Runtime { shard: id, source }));
                        return;
                    }
                };
                let info = ShardInfo {
                    id,
                    count,
                    driver: built.kind,
                    core,
                    fallback_reason: built.fallback_reason.take(),
                };
                let _ = ready_tx.send(Ok(info.clone()));
                drop(ready_tx);
                built.runtime.block_on(main(ShardStart {
                    info,
                    stop,
                    payload,
                }));
            })
            .map_err(|source| ShardError::Thread { shard: id, source })?;
        threads.push(handle);
    }
    drop(ready_tx);

    let mut infos: Vec<Option<ShardInfo>> = vec![None; count];
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(info)) => {
                let id = info.id;
                infos[id] = Some(info);
            }
            Ok(Err(e)) => {
                for s in &stops {
                    s.raise();
                }
                return Err(e);
            }
            Err(_) => break,
        }
    }
    let mut out = Vec::with_capacity(count);
    for (id, info) in infos.into_iter().enumerate() {
        match info {
            Some(i) => out.push(i),
            None => {
                for s in &stops {
                    s.raise();
                }
                return Err(ShardError::DiedEarly(id));
            }
        }
    }
    Ok(ShardSet {
        infos: out,
        stops,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_start_and_stop_on_signal() {
        let opts = ShardOptions {
            io_driver: IoDriver::Auto,
            pin_cores: true,
        };
        let set = start(vec![(), ()], &opts, |s: ShardStart<()>| async move {
            // Parks in the driver until the main thread raises the signal.
            s.stop.wait().await;
        })
        .unwrap();
        assert_eq!(set.infos.len(), 2);
        assert_eq!(set.infos[1].id, 1);
        set.stop_all();
        assert!(set.join(Duration::from_secs(5)));
    }

    #[test]
    fn epoll_driver_is_used_when_asked() {
        let opts = ShardOptions {
            io_driver: IoDriver::Epoll,
            pin_cores: false,
        };
        let set = start(vec![()], &opts, |s: ShardStart<()>| async move {
            s.stop.wait().await;
        })
        .unwrap();
        assert_eq!(set.infos[0].driver, DriverKind::Epoll);
        set.stop_all();
        assert!(set.join(Duration::from_secs(5)));
    }
}
