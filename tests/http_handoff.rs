//! End-to-end tests of `http::handoff`: two monoio runtimes on two threads
//! serve one `SO_REUSEPORT` port, as two shards do, and pass connections
//! to each other through a channel instead of the mesh. Raw HTTP over std
//! `TcpStream`s shows which thread answered each request.

#[path = "common/driver.rs"]
mod driver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use hearth::http::{
    adopt, serve_with, HandlerResult, Handoff, HttpConfig, Method, Moving, Request, Response,
    Router, Shutdown,
};
use hearth::shard::listener::bind_reuseport;
use serde_json::json;

struct State {
    id: usize,
}

/// Answers with the thread that served it, asking to move to `{to}`.
async fn here(state: Rc<State>, req: Request) -> HandlerResult {
    let to: usize = req.param("to")?;
    Ok(Response::json(200, &json!({"served_by": state.id})).move_to(to))
}

/// Sends moving connections to the other thread's channel.
struct ChannelHandoff {
    id: usize,
    to: Vec<mpsc::Sender<Moving>>,
}

impl Handoff for ChannelHandoff {
    fn here(&self) -> usize {
        self.id
    }
    fn send(&self, shard: usize, conn: Moving) -> LocalBoxFuture<'static, bool> {
        let ok = self.to[shard].send(conn).is_ok();
        Box::pin(async move { ok })
    }
}

struct Pair {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn config() -> HttpConfig {
    HttpConfig {
        max_header_bytes: 4096,
        max_body_bytes: 64 * 1024,
        header_timeout: Duration::from_secs(2),
        body_timeout: Duration::from_secs(2),
        keepalive_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(2),
        max_connections: 100,
        shutdown_grace: Duration::from_secs(1),
    }
}

fn start() -> Pair {
    let listeners = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel()).unzip();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (id, (listener, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let to = senders.clone();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let run = async move {
                let listener = monoio::net::TcpListener::from_std(listener).unwrap();
                let shutdown = Shutdown::new();
                let state = Rc::new(State { id });
                // The mesh's part: take what the other thread sent.
                let trigger = shutdown.clone();
                monoio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        while let Ok(conn) = inbox.try_recv() {
                            adopt(conn);
                        }
                        monoio::time::sleep(Duration::from_millis(1)).await;
                    }
                    trigger.trigger();
                });
                let router = Router::new().route(Method::Get, "/here/{to}", here);
                let handoff: Rc<dyn Handoff> = Rc::new(ChannelHandoff { id, to });
                serve_with(
                    listener,
                    Rc::new(router),
                    state,
                    Rc::new(config()),
                    shutdown,
                    None,
                    Some(handoff),
                )
                .await;
            };
            // The driver under test (moved sockets must leave and join its registrations).
            driver::block_on_test_driver(run);
        }));
    }
    Pair {
        addr,
        stop,
        threads,
    }
}

impl Pair {
    fn connect(&self) -> BufReader<TcpStream> {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(s)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
    }
}

fn read_status(r: &mut BufReader<TcpStream>) -> Option<u16> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Reads one response; returns which thread served it.
fn served_by(r: &mut BufReader<TcpStream>) -> usize {
    let status = read_status(r).expect("status line");
    assert_eq!(status, 200);
    let mut len = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some(v) = h.strip_prefix("Content-Length: ") {
            len = v.parse().unwrap();
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["served_by"].as_u64().unwrap() as usize
}

fn get(to: usize) -> String {
    format!("GET /here/{to} HTTP/1.1\r\nHost: x\r\n\r\n")
}

#[test]
fn a_connection_moves_where_its_responses_ask_and_keeps_serving() {
    let pair = start();
    for _ in 0..8 {
        let mut c = pair.connect();
        c.get_mut().write_all(get(0).as_bytes()).unwrap();
        let first = served_by(&mut c);
        // Asked to go to 0: from 1 it moved, on 0 it stayed.
        for _ in 0..3 {
            c.get_mut().write_all(get(0).as_bytes()).unwrap();
            assert_eq!(served_by(&mut c), 0, "first served by {first}");
        }
        // And back to 1 on request.
        c.get_mut().write_all(get(1).as_bytes()).unwrap();
        assert_eq!(served_by(&mut c), 0);
        c.get_mut().write_all(get(1).as_bytes()).unwrap();
        assert_eq!(served_by(&mut c), 1);
    }
    pair.stop();
}

/// Requests already read when the connection moves are answered by the
/// new thread, in order, after the old one's responses.
#[test]
fn pipelined_requests_travel_with_the_connection() {
    let pair = start();
    for _ in 0..8 {
        let mut c = pair.connect();
        let raw = format!("{}{}{}", get(1), get(1), get(1));
        c.get_mut().write_all(raw.as_bytes()).unwrap();
        let first = served_by(&mut c);
        assert_eq!(served_by(&mut c), 1, "first served by {first}");
        assert_eq!(served_by(&mut c), 1);
    }
    pair.stop();
}

/// A connection moves at most `MAX_MOVES` times, then stays put whatever
/// its responses ask (a proxy's connection carrying many users).
#[test]
fn a_connection_stops_moving_after_max_moves() {
    let pair = start();
    for _ in 0..4 {
        let mut c = pair.connect();
        let mut seen = Vec::new();
        for i in 0..8 {
            c.get_mut().write_all(get(i % 2).as_bytes()).unwrap();
            seen.push(served_by(&mut c));
        }
        let moves = seen.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(
            moves,
            usize::from(hearth::http::handoff::MAX_MOVES),
            "{seen:?}"
        );
    }
    pair.stop();
}
