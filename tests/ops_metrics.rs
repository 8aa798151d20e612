//! End-to-end: the metrics listener (`kind = "metrics"`) against the real
//! binary (2 shards) and real PostgreSQL: `/metrics` is valid text
//! exposition 0.0.4, its families exist, request counters move under route
//! templates (never raw paths or user ids), and `/health` answers on
//! client, federation and metrics listeners.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use common::fed::free_port;
use common::{call, enc, ok, register_user, request_to, Hearth, Opts};
use serde_json::json;

struct Node {
    h: Hearth,
    metrics: SocketAddr,
    federation: SocketAddr,
}

fn start() -> Node {
    let (m, f) = (free_port(), free_port());
    let h = Hearth::start(
        Opts::shards(2)
            .env("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1")
            .env("HEARTH_LISTENERS__1__PORT", &m.to_string())
            .env("HEARTH_LISTENERS__1__KIND", "metrics")
            .env("HEARTH_LISTENERS__2__ADDRESS", "127.0.0.1")
            .env("HEARTH_LISTENERS__2__PORT", &f.to_string())
            .env("HEARTH_LISTENERS__2__KIND", "federation"),
    );
    Node {
        h,
        metrics: format!("127.0.0.1:{m}").parse().unwrap(),
        federation: format!("127.0.0.1:{f}").parse().unwrap(),
    }
}

/// One parsed series line.
#[derive(Debug)]
struct Line {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses the exposition strictly: every line is a comment (`# HELP`,
/// `# TYPE`) or a series; every series' family has HELP and TYPE before
/// it. Returns the series and each family's type.
fn parse(text: &str) -> (Vec<Line>, HashMap<String, String>) {
    let mut types = HashMap::new();
    let mut helps = HashSet::new();
    let mut lines = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(valid_name(name), "{l}");
            helps.insert(name.to_owned());
            continue;
        }
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap(), it.next().unwrap());
            assert!(
                ["counter", "gauge", "histogram"].contains(&ty),
                "bad type: {l}"
            );
            assert!(helps.contains(name), "TYPE before HELP: {l}");
            types.insert(name.to_owned(), ty.to_owned());
            continue;
        }
        assert!(!l.starts_with('#') && !l.is_empty(), "stray line: {l:?}");
        let line = parse_series(l);
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                line.name
                    .strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&line.name)
            .to_owned();
        assert!(types.contains_key(&family), "no TYPE for {l}");
        lines.push(line);
    }
    (lines, types)
}

fn parse_series(l: &str) -> Line {
    let (head, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {l}")),
    };
    let (name, labels) = match head.split_once('{') {
        None => (head.to_owned(), Vec::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("{l}"));
            (name.to_owned(), parse_labels(body, l))
        }
    };
    assert!(valid_name(&name), "{l}");
    Line {
        name,
        labels,
        value,
    }
}

fn parse_labels(mut s: &str, l: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (k, rest) = s.split_once("=\"").unwrap_or_else(|| panic!("{l}"));
        assert!(
            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{l}"
        );
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => v.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => v.push(c),
                    _ => panic!("bad escape in {l}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => v.push(c),
                None => panic!("unterminated label in {l}"),
            }
        };
        out.push((k.to_owned(), v));
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    out
}

fn valid_name(n: &str) -> bool {
    let mut c = n.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn scrape(n: &Node) -> (Vec<Line>, HashMap<String, String>, String) {
    let r = request_to(n.metrics, "GET", "/metrics", None, b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(r.body).expect("UTF-8");
    let (lines, types) = parse(&text);
    (lines, types, text)
}

fn label<'a>(l: &'a Line, k: &str) -> Option<&'a str> {
    l.labels
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

/// The request count of (route, method, status class), summed.
fn requests(lines: &[Line], route: &str, method: &str, class: &str) -> f64 {
    lines
        .iter()
        .filter(|l| l.name == "hearth_http_requests_total")
        .filter(|l| {
            label(l, "route") == Some(route)
                && label(l, "method") == Some(method)
                && label(l, "status_class") == Some(class)
        })
        .map(|l| l.value)
        .sum()
}

#[test]
fn metrics_listener_serves_the_expected_families() {
    let n = start();
    let a = register_user(&n.h, "metrics_alice");
    let room = ok(call(&n.h, "POST", "/createRoom", &a.token, Some(json!({}))))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        ok(call(
            &n.h,
            "PUT",
            &format!("/rooms/{}/send/m.room.message/t{i}", enc(&room)),
            &a.token,
            Some(json!({"msgtype": "m.text", "body": "hi"})),
        ));
    }
    ok(call(&n.h, "GET", "/sync?timeout=0", &a.token, None));
    let unknown = call(
        &n.h,
        "GET",
        "/no/such/path/@metrics_alice:localhost",
        &a.token,
        None,
    );
    assert_eq!(unknown.status, 404);

    let (lines, types, text) = scrape(&n);
    for (family, ty) in [
        ("hearth_http_requests_total", "counter"),
        ("hearth_http_request_duration_seconds", "histogram"),
        ("hearth_shard_connections", "gauge"),
        ("hearth_shard_requests_in_flight", "gauge"),
        ("hearth_shard_mesh_jobs_running", "gauge"),
        ("hearth_mesh_jobs_received_total", "counter"),
        ("hearth_http_connections_moved_in_total", "counter"),
        ("hearth_mesh_ring_queued", "gauge"),
        ("hearth_mesh_ring_capacity", "gauge"),
        ("hearth_db_group_commit_batch_size", "histogram"),
        ("hearth_db_pool_connections", "gauge"),
        ("hearth_db_pool_in_flight", "gauge"),
        ("hearth_db_pool_waiters", "gauge"),
        ("hearth_sync_parked", "gauge"),
        ("hearth_admission_running", "gauge"),
        ("hearth_admission_queued", "gauge"),
        ("hearth_federation_queued_edus", "gauge"),
        ("hearth_federation_backoff_seconds", "gauge"),
        ("hearth_federation_pending_pdus", "gauge"),
        ("hearth_shard_scrape_ok", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        assert_eq!(types.get(family).map(String::as_str), Some(ty), "{family}");
    }
    // Both shards answered.
    let up: Vec<&Line> = lines
        .iter()
        .filter(|l| l.name == "hearth_shard_scrape_ok")
        .collect();
    assert_eq!(up.len(), 2, "{text}");
    assert!(up.iter().all(|l| l.value == 1.0), "{text}");
    assert!(lines
        .iter()
        .any(|l| l.name == "hearth_db_pool_connections" && l.value >= 1.0));
    // Ring occupancy per ordered pair of shards.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.name == "hearth_mesh_ring_capacity")
            .count(),
        2
    );
    let rss = lines
        .iter()
        .find(|l| l.name == "process_resident_memory_bytes")
        .unwrap();
    assert!(rss.value > 1e6, "{}", rss.value);

    // Counters moved, under route templates.
    assert!(requests(&lines, "/_matrix/client/v3/register", "POST", "2xx") >= 1.0);
    let send = "/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}";
    assert_eq!(requests(&lines, send, "PUT", "2xx"), 3.0, "{text}");
    assert!(requests(&lines, "/_matrix/client/v3/sync", "GET", "2xx") >= 1.0);
    assert!(requests(&lines, "unmatched", "GET", "4xx") >= 1.0);
    // The histogram of the send route counted the same three.
    let count = lines
        .iter()
        .find(|l| {
            l.name == "hearth_http_request_duration_seconds_count"
                && label(l, "route") == Some(send)
                && label(l, "status_class") == Some("2xx")
        })
        .unwrap();
    assert_eq!(count.value, 3.0);
    // Writes went through group commit.
    let batches: f64 = lines
        .iter()
        .filter(|l| l.name == "hearth_db_group_commit_batch_size_count")
        .map(|l| l.value)
        .sum();
    assert!(batches >= 1.0, "{text}");

    // No raw paths or ids anywhere in the labels.
    for l in &lines {
        for (_, v) in &l.labels {
            assert!(
                !v.contains('@') && !v.contains('!') && !v.contains("metrics_alice"),
                "identifier in a label: {l:?}"
            );
        }
    }
    assert!(!text.contains(&room) && !text.contains(&a.id));

    // A second scrape sees the first one counted on the metrics route.
    let (lines, _, _) = scrape(&n);
    assert!(requests(&lines, "/metrics", "GET", "2xx") >= 1.0);
}

#[test]
fn health_answers_on_every_listener_kind() {
    let n = start();
    for addr in [n.h.addr, n.federation, n.metrics] {
        let r = request_to(addr, "GET", "/health", None, b"");
        assert_eq!(r.status, 200, "{addr}");
        assert_eq!(r.body, b"OK", "{addr}");
    }
    // The metrics listener serves nothing else; /metrics only there.
    assert_eq!(
        request_to(n.metrics, "GET", "/_matrix/client/versions", None, b"").status,
        404
    );
    assert_eq!(
        request_to(n.h.addr, "GET", "/metrics", None, b"").status,
        404
    );
    // A parked sync shows up while it waits.
    let a = register_user(&n.h, "metrics_bob");
    let addr = n.h.addr;
    let token = a.token.clone();
    let first = ok(call(&n.h, "GET", "/sync?timeout=0", &a.token, None));
    let since = first["next_batch"].as_str().unwrap().to_owned();
    let waiter = std::thread::spawn(move || {
        request_to(
            addr,
            "GET",
            &format!("/_matrix/client/v3/sync?timeout=3000&since={}", enc(&since)),
            Some(&token),
            b"",
        )
    });
    let mut parked = 0.0;
    for _ in 0..40 {
        let (lines, _, _) = scrape(&n);
        parked = lines
            .iter()
            .filter(|l| l.name == "hearth_sync_parked")
            .map(|l| l.value)
            .sum();
        if parked >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(parked, 1.0);
    assert_eq!(waiter.join().unwrap().status, 200);
    let (lines, _, _) = scrape(&n);
    let parked: f64 = lines
        .iter()
        .filter(|l| l.name == "hearth_sync_parked")
        .map(|l| l.value)
        .sum();
    assert_eq!(parked, 0.0);
}

/// A keep-alive `/sync` request.
fn sync_req(token: &str, since: Option<&str>, timeout: u64) -> String {
    let since = since
        .map(|s| format!("&since={}", enc(s)))
        .unwrap_or_default();
    format!(
        "GET /_matrix/client/v3/sync?timeout={timeout}{since} HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
}

fn write_all(c: &mut std::net::TcpStream, raw: &str) {
    std::io::Write::write_all(c, raw.as_bytes()).unwrap();
}

fn synced(c: &mut std::net::TcpStream) -> serde_json::Value {
    let r = common::read_response(c, false);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// `http::handoff`: a connection whose `/sync`s run on another shard moves
/// there after the first, and goes on serving the same client: later
/// syncs, pipelined ones and a parked long poll woken by a message all
/// answer on the one socket. Found necessary by the fan-out profile (the
/// return hop of every wake-up); the counter shows the moves.
#[test]
fn sync_connections_move_to_their_users_shard() {
    let n = start();
    let users: Vec<_> = (0..16)
        .map(|i| register_user(&n.h, &format!("mover{i}")))
        .collect();
    let room = ok(call(
        &n.h,
        "POST",
        "/createRoom",
        &users[0].token,
        Some(json!({"preset": "public_chat"})),
    ))["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for u in &users[1..] {
        ok(call(
            &n.h,
            "POST",
            &format!("/join/{}", enc(&room)),
            &u.token,
            Some(json!({})),
        ));
    }
    let mut conns: Vec<_> = users.iter().map(|_| n.h.connect()).collect();
    let mut since = Vec::new();
    // The first two syncs pipelined, in one write: the second is usually
    // read with the first, so its bytes travel with the moving socket.
    for (c, u) in conns.iter_mut().zip(&users) {
        let first = sync_req(&u.token, None, 0);
        write_all(c, &format!("{first}{first}"));
        synced(c);
        since.push(synced(c)["next_batch"].as_str().unwrap().to_owned());
    }
    for ((c, u), s) in conns.iter_mut().zip(&users).zip(&mut since) {
        write_all(c, &sync_req(&u.token, Some(s), 0));
        *s = synced(c)["next_batch"].as_str().unwrap().to_owned();
    }
    // Long polls parked on the moved connections wake for a message.
    for ((c, u), s) in conns.iter_mut().zip(&users).zip(&since) {
        write_all(c, &sync_req(&u.token, Some(s), 20_000));
    }
    std::thread::sleep(Duration::from_millis(200));
    ok(call(
        &n.h,
        "PUT",
        &format!("/rooms/{}/send/m.room.message/wake", enc(&room)),
        &users[0].token,
        Some(json!({"msgtype": "m.text", "body": "wake up"})),
    ));
    for c in &mut conns {
        let body = synced(c);
        assert!(body.to_string().contains("wake up"), "{body}");
    }

    let (lines, _, text) = scrape(&n);
    let shards = lines
        .iter()
        .filter(|l| l.name == "hearth_shard_scrape_ok")
        .count();
    let moved: f64 = lines
        .iter()
        .filter(|l| l.name == "hearth_http_connections_moved_in_total")
        .map(|l| l.value)
        .sum();
    // Each connection has one user, so it moves at most once.
    assert!(moved <= conns.len() as f64, "{text}");
    if shards > 1 {
        // All 16 accepted on their users' shards: 2^-16 with two shards.
        assert!(moved >= 1.0, "{text}");
    } else {
        assert_eq!(moved, 0.0, "{text}");
    }
}
