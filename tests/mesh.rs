//! Shard mesh across real OS threads, each with its own monoio runtime.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::time::Duration;

use hearth::mesh::{BroadcastScope, Mesh, MeshEndpoint, MeshError};
use hearth::primitives::yield_now;

#[derive(Clone, Copy, Debug)]
enum Driver {
    Fusion,
    Uring,
    Legacy,
}

fn block_on<F: Future>(driver: Driver, fut: F) -> F::Output {
    match driver {
        Driver::Fusion => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(fut),
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(fut),
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(fut),
    }
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Per sending shard: the next sequence number expected from it.
    static SEEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    static DONE: Cell<usize> = const { Cell::new(0) };
    static DONE_WAKER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

fn note_done() {
    DONE.with(|d| d.set(d.get() + 1));
    if let Some(w) = DONE_WAKER.with(|w| w.borrow_mut().take()) {
        w.wake();
    }
}

/// Tell every peer we will send nothing more, then wait for all peers to
/// say the same, so no shard closes while others still talk to it.
async fn finish(ep: &MeshEndpoint) {
    ep.broadcast(BroadcastScope::Others, || async { note_done() })
        .await
        .unwrap();
    let peers = ep.n_shards() - 1;
    std::future::poll_fn(|cx| {
        if DONE.with(|d| d.get()) >= peers {
            return Poll::Ready(());
        }
        DONE_WAKER.with(|w| *w.borrow_mut() = Some(cx.waker().clone()));
        Poll::Pending
    })
    .await
}

/// Run `f` on each shard of an `n`-shard mesh (each on its own thread).
fn run_mesh<F, Fut, R>(n: usize, cap: usize, drivers: &[Driver], f: F) -> Vec<R>
where
    F: Fn(Rc<MeshEndpoint>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = R>,
    R: Send + 'static,
{
    let threads: Vec<_> = Mesh::new(n, cap)
        .into_iter()
        .map(|ep| {
            let f = f.clone();
            let driver = drivers[ep.shard_id() % drivers.len()];
            std::thread::spawn(move || {
                SHARD.with(|s| s.set(ep.shard_id()));
                SEEN.with(|s| *s.borrow_mut() = vec![0; n.max(4)]);
                block_on(driver, async move {
                    let ep = Rc::new(ep);
                    ep.spawn_receiver();
                    f(ep).await
                })
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Job body: check `seq` is the next one from `from`, in order.
fn record(from: usize, seq: u64) {
    SEEN.with(|s| {
        let mut s = s.borrow_mut();
        assert_eq!(s[from], seq, "out of order from shard {from}");
        s[from] += 1;
    });
}

fn seen_from(from: usize) -> u64 {
    SEEN.with(|s| s.borrow()[from])
}

#[test]
fn hundred_thousand_in_order_per_pair() {
    const N: u64 = 100_000;
    let out = run_mesh(3, 256, &[Driver::Fusion], |ep| async move {
        let me = ep.shard_id();
        let senders: Vec<_> = (0..ep.n_shards())
            .filter(|&t| t != me)
            .map(|t| {
                let ep = ep.clone();
                monoio::spawn(async move {
                    for seq in 0..N {
                        ep.send_to(t, move || async move { record(me, seq) })
                            .await
                            .unwrap();
                    }
                    // Jobs start in order, so this runs after all of ours.
                    ep.submit_to(t, move || async move { seen_from(me) })
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut counts = Vec::new();
        for s in senders {
            counts.push(s.await);
        }
        finish(&ep).await;
        (counts, ep.stats().received.load(Ordering::Relaxed))
    });
    for (counts, received) in out {
        assert_eq!(counts, vec![N, N]);
        // Data + one fence per peer + one "done" per peer.
        assert_eq!(received, 2 * (N + 2));
    }
}

#[test]
fn backpressure_parks_sender_and_loses_nothing() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let go_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(go_tx)));
    let out: Vec<(u64, u64)> = run_mesh(2, 4, &[Driver::Fusion], move |ep| {
        let (go_rx, go_tx) = (go_rx.clone(), go_tx.clone());
        async move {
            if ep.shard_id() == 1 {
                // A receiver too busy to drain: block this shard until told.
                let rx = go_rx.lock().unwrap().take().unwrap();
                rx.recv().unwrap();
                finish(&ep).await;
                return (0, (0..3).map(seen_from).sum());
            }
            let done = Rc::new(Cell::new(0u64));
            let mut tasks = Vec::new();
            for k in 0..3u64 {
                let (ep, done) = (ep.clone(), done.clone());
                tasks.push(monoio::spawn(async move {
                    for i in 0..300u64 {
                        // Stream k: in order within each sending task.
                        let k = k as usize;
                        ep.send_to(1, move || async move { record(k, i) })
                            .await
                            .unwrap();
                        done.set(done.get() + 1);
                    }
                }));
            }
            for _ in 0..50 {
                yield_now().await;
            }
            let parked_at = done.get();
            go_tx.lock().unwrap().take().unwrap().send(()).unwrap();
            for t in tasks {
                t.await;
            }
            let seen = ep
                .submit_to(1, || async { (0..3).map(seen_from).sum() })
                .await
                .unwrap();
            finish(&ep).await;
            (parked_at, seen)
        }
    });
    // The ring holds 4; every sender was parked, none dropped a message.
    assert_eq!(out[0].0, 4);
    assert_eq!(out[0].1, 900);
}

#[test]
fn submit_to_round_trips_and_broadcast() {
    let out = run_mesh(4, 8, &[Driver::Fusion], |ep| async move {
        let me = ep.shard_id();
        for t in 0..ep.n_shards() {
            let (on, v) = ep
                .submit_to(
                    t,
                    move || async move { (SHARD.with(|s| s.get()), me * 100 + t) },
                )
                .await
                .unwrap();
            assert_eq!((on, v), (t, me * 100 + t));
        }
        let r = ep.submit_to(9, || async {}).await;
        assert_eq!(
            r,
            Err(MeshError::NoSuchShard {
                shard: 9,
                n_shards: 4
            })
        );
        let all = ep
            .broadcast_wait(BroadcastScope::All, || async { SHARD.with(|s| s.get()) })
            .await;
        let all: Vec<_> = all.into_iter().map(|(t, r)| (t, r.unwrap())).collect();
        assert_eq!(all, vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        let others = ep
            .broadcast_wait(BroadcastScope::Others, || async { SHARD.with(|s| s.get()) })
            .await;
        assert!(others.iter().all(|(t, r)| *t != me && r.as_ref() == Ok(t)));
        assert_eq!(others.len(), 3);
        finish(&ep).await; // broadcast(Others) reached every peer, else this hangs
        DONE.with(|d| d.get())
    });
    assert_eq!(out, vec![3, 3, 3, 3]);
}

/// A receiver parked in `driver` is woken from another thread and does not
/// spin while idle.
fn wakes_parked_receiver(driver: Driver) {
    const MSGS: u64 = 20;
    let out = run_mesh(2, 16, &[Driver::Legacy, driver], |ep| async move {
        if ep.shard_id() == 0 {
            for seq in 0..MSGS {
                // Real time here: the receiver must really be parked.
                monoio::time::sleep(Duration::from_millis(5)).await;
                ep.send_to(1, move || async move { record(0, seq) })
                    .await
                    .unwrap();
            }
        }
        finish(&ep).await;
        (
            seen_from(0),
            ep.stats().receiver_polls.load(Ordering::Relaxed),
        )
    });
    let (seen, polls) = out[1];
    assert_eq!(seen, MSGS);
    // About one wake-up per message (+ the done message and start-up);
    // a spinning loop would show orders of magnitude more.
    assert!(polls <= 2 * MSGS + 6, "receiver polled {polls} times");
}

#[test]
fn wakes_receiver_parked_in_legacy_driver() {
    wakes_parked_receiver(Driver::Legacy);
}

#[test]
fn wakes_receiver_parked_in_io_uring_driver() {
    if !monoio::utils::detect_uring() {
        eprintln!("io_uring not available here; skipping");
        return;
    }
    wakes_parked_receiver(Driver::Uring);
}

#[test]
fn closed_endpoint_gives_error_not_hang() {
    let (enq_tx, enq_rx) = mpsc::channel::<()>();
    let (closed_tx, closed_rx) = mpsc::channel::<()>();
    let mut eps = Mesh::new(2, 1);
    let ep1 = eps.pop().unwrap();
    let ep0 = eps.pop().unwrap();
    let t1 = std::thread::spawn(move || {
        block_on(Driver::Fusion, async move {
            // Never receive; close once shard 0 has jobs queued and waiting.
            enq_rx.recv().unwrap();
            ep1.close();
            closed_tx.send(()).unwrap();
        })
    });
    let t0 = std::thread::spawn(move || {
        block_on(Driver::Fusion, async move {
            let ep = Rc::new(ep0);
            ep.spawn_receiver();
            let a = monoio::spawn({
                let ep = ep.clone();
                async move { ep.submit_to(1, || async { 1 }).await }
            });
            // The ring (capacity 1) is now full: this one waits for room.
            let b = monoio::spawn({
                let ep = ep.clone();
                async move { ep.submit_to(1, || async { 2 }).await }
            });
            for _ in 0..10 {
                yield_now().await;
            }
            enq_tx.send(()).unwrap();
            assert_eq!(a.await, Err(MeshError::Closed { shard: 1 }));
            assert_eq!(b.await, Err(MeshError::Closed { shard: 1 }));
            closed_rx.recv().unwrap();
            let r = ep.send_to(1, || async {}).await;
            assert_eq!(r, Err(MeshError::Closed { shard: 1 }));
            ep.close();
            let r = ep.submit_to(0, || async {}).await;
            assert_eq!(r, Err(MeshError::Closed { shard: 0 }));
        })
    });
    t1.join().unwrap();
    t0.join().unwrap();
}
