//! Fault: 10,000 client connections opened at once, against the real
//! binary over loopback. hearth neither crashes nor stalls: every one of
//! them is served (or, over `http.max_connections_per_shard`, shed with a
//! 503 or a close — never a hang), and a normal client's `/versions` and
//! authenticated `/sync` are answered promptly while they are open.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::faults::{nofile_of, raise_nofile, timed, within};
use common::{register, Hearth, Opts};
use hearth::db::testing::TestCluster;

const FLOOD: usize = 10_000;
/// What "promptly" means for one normal request here (a loaded 2-core CI
/// box; unloaded they take a few milliseconds).
const PROMPT: Duration = Duration::from_secs(2);
/// The two tests each hold 10,000 descriptors: never at once.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const SYNC: &str = "/_matrix/client/v3/sync?timeout=0";
const VERSIONS: &str = "/_matrix/client/versions";

fn start(extra: &[(&str, &str)]) -> Hearth {
    let db = TestCluster::shared().fresh_database().url();
    let opts = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", &db)
        .env("HEARTH_LOG__ACCESS_LOG", "false");
    Hearth::start(extra.iter().fold(opts, |o, (k, v)| o.env(k, v)))
}

/// Opens `n` connections from a few threads at once.
fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                (0..n / 4 + usize::from(t < n % 4))
                    .map(|_| {
                        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                            .expect("connect");
                        s.set_nodelay(true).unwrap();
                        s
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("flood thread"))
        .collect()
}

/// What one flood connection got back.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    /// Closed (FIN or RST) without an answer.
    Closed,
    /// Nothing within the limit: the failure this test exists for.
    Silent,
}

/// Reads one response head (the bodies here are small and discarded).
fn outcome(s: &mut TcpStream, limit: Duration) -> Outcome {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut r = BufReader::new(s);
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match r.read(&mut buf) {
            Ok(0) => return Outcome::Closed,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Outcome::Silent,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Outcome::Silent,
            Err(_) => return Outcome::Closed,
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Outcome::Status(status)
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that our child exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Normal requests, each answered within [`PROMPT`].
fn normal_client(addr: SocketAddr, token: &str, rounds: usize, limit: Duration) -> Duration {
    let mut worst = Duration::ZERO;
    for _ in 0..rounds {
        worst = worst.max(timed(addr, VERSIONS, None, 200, limit));
        worst = worst.max(timed(addr, SYNC, Some(token), 200, limit));
    }
    worst
}

/// Under the default cap (10,000 per shard) all 10,000 are served and
/// stay open. While their 10,000 requests are in flight a normal client
/// takes its turn (at most the flood's own time, plus [`PROMPT`]: never
/// starved); while they sit open and idle each of its requests is
/// answered within [`PROMPT`]. hearth raised its own open-file limit to
/// the hard limit at start.
#[test]
fn ten_thousand_connections_are_served_and_a_normal_client_still_is() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        raise_nofile() >= FLOOD as u64 + 1000,
        "hard RLIMIT_NOFILE too low"
    );
    let h = start(&[]);
    let (addr, pid) = (h.addr, h.pid());
    let (soft, hard) = nofile_of(pid);
    assert_eq!(
        soft, hard,
        "hearth raises its soft open-file limit to the hard one"
    );
    let token = register(&h, "alice");
    within(Duration::from_secs(180), &[pid], move || {
        let started = Instant::now();
        let mut conns = flood(addr, FLOOD);
        eprintln!("{FLOOD} connections open in {:?}", started.elapsed());
        // Every connection asks at once (keep-alive).
        let req = format!("GET {VERSIONS} HTTP/1.1\r\nHost: x\r\n\r\n");
        for s in &mut conns {
            s.write_all(req.as_bytes()).expect("write");
        }
        let t0 = Instant::now();
        let during = normal_client(addr, &token, 1, Duration::from_secs(30));
        let mut outcomes = std::collections::HashMap::new();
        for s in &mut conns {
            *outcomes
                .entry(format!("{:?}", outcome(s, Duration::from_secs(20))))
                .or_insert(0usize) += 1;
        }
        assert_eq!(
            outcomes.get("Status(200)").copied(),
            Some(FLOOD),
            "{outcomes:?}"
        );
        // All still open and idle: the normal client is still served.
        let flood_took = t0.elapsed();
        let idle = normal_client(addr, &token, 20, PROMPT);
        eprintln!(
            "worst normal request: {during:?} while the flood's {FLOOD} requests \
             (answered in {flood_took:?}) were in flight, {idle:?} beside the idle flood"
        );
        // In the burst a normal request takes its turn among 10,000 (FIFO
        // on each shard), but is never starved behind all of them.
        assert!(
            during <= flood_took + PROMPT,
            "normal request {during:?}, flood {flood_took:?}"
        );
        assert!(alive(pid));
        drop(conns);
    });
    drop(h);
}

/// Over the cap, connections are shed politely: each gets a 503 or is
/// closed, none is left hanging, hearth stays up, and once the flood
/// leaves a normal client is served at once.
#[test]
fn connections_over_the_cap_are_shed_politely() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        raise_nofile() >= FLOOD as u64 + 1000,
        "hard RLIMIT_NOFILE too low"
    );
    const CAP: usize = 1000;
    let h = start(&[("HEARTH_HTTP__MAX_CONNECTIONS_PER_SHARD", "1000")]);
    let (addr, pid) = (h.addr, h.pid());
    let shards = Opts::shards(2).shards;
    let token = register(&h, "alice");
    within(Duration::from_secs(180), &[pid], move || {
        let mut conns = flood(addr, FLOOD);
        let req = format!("GET {VERSIONS} HTTP/1.1\r\nHost: x\r\n\r\n");
        for s in &mut conns {
            // A shed connection may already be reset: that is allowed.
            let _ = s.write_all(req.as_bytes());
        }
        let (mut served, mut shed, mut closed) = (0, 0, 0);
        for s in &mut conns {
            match outcome(s, Duration::from_secs(20)) {
                Outcome::Status(200) => served += 1,
                Outcome::Status(503) => shed += 1,
                Outcome::Closed => closed += 1,
                other => panic!("a flood connection got {other:?}"),
            }
        }
        eprintln!("served {served}, shed with 503 {shed}, closed {closed}");
        assert!(served <= CAP * shards, "cap not enforced: {served} served");
        assert!(served >= CAP / 2, "too few served: {served}");
        assert!(shed > 0, "no connection was answered 503");
        assert_eq!(served + shed + closed, FLOOD);
        assert!(alive(pid), "hearth died under the flood");
        drop(conns);
        // The slots free up as the flood's connections close.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(addr).expect("connect");
            let _ = s.write_all(req.as_bytes());
            if outcome(&mut s, PROMPT) == Outcome::Status(200) {
                break;
            }
            assert!(
                Instant::now() < until,
                "still shedding after the flood left"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        normal_client(addr, &token, 5, PROMPT);
    });
    drop(h);
}
