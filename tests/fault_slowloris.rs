//! Fault: 5,000 slowloris connections, against the real binary over
//! loopback. Each sends a request head one header line at a time and never
//! finishes it; hearth answers each 408 and closes it when
//! `http.header_timeout_ms` (from the head's first byte) runs out, and the
//! attacker reconnects, as slowloris does. Meanwhile a normal client's p99
//! may at most double (see [`bar`]).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{percentile, raise_nofile, timed, within};
use common::{register, Hearth, Opts};
use hearth::db::testing::TestCluster;

const ATTACKERS: usize = 5_000;
/// One header line per connection per round, as slowloris does (its own
/// default is 15 s; faster here, so the test is harder, not easier).
const TRICKLE: Duration = Duration::from_secs(1);
/// Short enough that the window below sees the deadline fire for the whole
/// crowd (opened together, so closed together) and the reconnects after it.
const HEADER_TIMEOUT_MS: &str = "5000";
const WINDOW: Duration = Duration::from_secs(12);
const LIMIT: Duration = Duration::from_secs(5);
const SYNC: &str = "/_matrix/client/v3/sync?timeout=0";
const VERSIONS: &str = "/_matrix/client/versions";

/// The bar: at most twice the baseline p99. On a quiet box the baseline is
/// a few milliseconds and twice it is within the noise of a shared 2-core
/// machine, so the bar is never below baseline + 10 ms.
fn bar(baseline: Duration) -> Duration {
    (baseline * 2).max(baseline + Duration::from_millis(10))
}

/// A normal client for `window`: alternately `/versions` and an
/// authenticated `/sync`, each on a fresh connection (as a browser's
/// first request is), one at a time. Every request's latency.
fn normal_client(addr: SocketAddr, token: &str, window: Duration) -> Vec<Duration> {
    let until = Instant::now() + window;
    let mut out = Vec::new();
    while Instant::now() < until {
        out.push(timed(addr, VERSIONS, None, 200, LIMIT));
        out.push(timed(addr, SYNC, Some(token), 200, LIMIT));
    }
    out
}

/// What the attacker did.
#[derive(Default)]
struct Tally {
    /// Connections hearth closed (408 or EOF) that the attacker replaced.
    closed: AtomicUsize,
    /// Of those, how many were answered 408 first.
    answered_408: AtomicUsize,
}

/// One slowloris connection: a head begun and never finished.
fn open(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, LIMIT).ok()?;
    s.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
        .ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Whether hearth has closed `s` (reading what it sent, if anything).
fn closed_by_peer(s: &mut TcpStream, tally: &Tally) -> bool {
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => {
            if buf[..n].starts_with(b"HTTP/1.1 408") {
                tally.answered_408.fetch_add(1, Ordering::Relaxed);
            }
            true
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// The attacker: opens [`ATTACKERS`] connections at once, then each
/// [`TRICKLE`] sends every one another header line, sweeping them in ten
/// slices so the lines are spread over the round. A connection hearth
/// closed is replaced at once. Returns when `stop` is set.
fn attack(addr: SocketAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conns: Vec<Option<TcpStream>> = (0..ATTACKERS).map(|_| open(addr)).collect();
    assert!(
        conns.iter().all(Option::is_some),
        "could not open {ATTACKERS} connections"
    );
    opened.store(true, Ordering::SeqCst);
    let slice = ATTACKERS / 10;
    let mut line = 0u64;
    while !stop.load(Ordering::SeqCst) {
        for part in conns.chunks_mut(slice) {
            let tick = Instant::now();
            for c in part.iter_mut() {
                let alive = match c {
                    Some(s) => {
                        !closed_by_peer(s, &tally)
                            && s.write_all(format!("X-Trickle-{line}: a\r\n").as_bytes())
                                .is_ok()
                    }
                    None => false,
                };
                if !alive {
                    tally.closed.fetch_add(1, Ordering::Relaxed);
                    *c = open(addr);
                }
            }
            line += 1;
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep((TRICKLE / 10).saturating_sub(tick.elapsed()));
        }
    }
}

#[test]
fn five_thousand_slowloris_connections_at_most_double_a_normal_clients_p99() {
    assert!(
        raise_nofile() >= ATTACKERS as u64 + 1000,
        "hard RLIMIT_NOFILE too low"
    );
    let db = TestCluster::shared().fresh_database().url();
    let h = Hearth::start(
        Opts::shards(2)
            .env("HEARTH_DATABASE__URL", &db)
            .env("HEARTH_LOG__ACCESS_LOG", "false")
            .env("HEARTH_HTTP__HEADER_TIMEOUT_MS", HEADER_TIMEOUT_MS),
    );
    let (addr, pid) = (h.addr, h.pid());
    let token = register(&h, "alice");
    within(Duration::from_secs(120), &[pid], move || {
        // Warm up (first sync builds caches), then the baseline.
        normal_client(addr, &token, Duration::from_secs(1));
        let baseline = normal_client(addr, &token, WINDOW);
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let attacker = {
            let (stop, opened, tally) = (stop.clone(), opened.clone(), tally.clone());
            std::thread::spawn(move || attack(addr, stop, opened, tally))
        };
        while !opened.load(Ordering::SeqCst) {
            assert!(!attacker.is_finished(), "the attacker gave up");
            std::thread::sleep(Duration::from_millis(50));
        }
        let attacked = normal_client(addr, &token, WINDOW);
        stop.store(true, Ordering::SeqCst);
        attacker.join().expect("attacker");
        let (b99, a99) = (percentile(&baseline, 99.0), percentile(&attacked, 99.0));
        let (b50, a50) = (percentile(&baseline, 50.0), percentile(&attacked, 50.0));
        let closed = tally.closed.load(Ordering::Relaxed);
        let answered = tally.answered_408.load(Ordering::Relaxed);
        eprintln!(
            "normal client: baseline p50 {b50:?} p99 {b99:?} ({} requests); \
             under {ATTACKERS} slowloris p50 {a50:?} p99 {a99:?} ({} requests); \
             hearth closed {closed} of them ({answered} with a 408)",
            baseline.len(),
            attacked.len()
        );
        // The deadline fired for the crowd within the window.
        assert!(
            closed >= ATTACKERS,
            "only {closed} slowloris connections were closed"
        );
        assert!(answered > 0, "no slowloris connection was answered 408");
        assert!(
            a99 <= bar(b99),
            "p99 {a99:?} under slowloris, baseline {b99:?} (bar {:?})",
            bar(b99)
        );
    });
    drop(h);
}
