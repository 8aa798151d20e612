//! End-to-end tests of the HTTP layer: a real monoio runtime on a thread,
//! a real listening socket, and raw HTTP spoken over std `TcpStream`s.

#[path = "common/driver.rs"]
mod driver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown as NetShutdown, SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hearth::http::{
    serve, HandlerResult, HttpConfig, MatrixError, Method, Request, Response, Router, Shutdown,
};
use serde_json::{json, Value};

struct State {
    shutdown: Shutdown,
}

async fn hello(_: Rc<State>, _: Request) -> HandlerResult {
    Ok(Response::json(200, &json!({"hello": "world"})))
}

async fn echo(_: Rc<State>, req: Request) -> HandlerResult {
    let ct = req
        .header("content-type")
        .unwrap_or("application/octet-stream")
        .to_owned();
    Ok(Response::empty(200)
        .with_header("Content-Type", ct)
        .with_body(req.body))
}

async fn slow(_: Rc<State>, req: Request) -> HandlerResult {
    let ms: u64 = req.param("ms")?;
    monoio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Response::json(200, &json!({"slept": ms})))
}

async fn panics(_: Rc<State>, _: Request) -> HandlerResult {
    panic!("handler blew up");
}

async fn send_event(_: Rc<State>, req: Request) -> HandlerResult {
    Ok(Response::json(
        200,
        &json!({
            "roomId": req.param_str("roomId")?,
            "eventType": req.param_str("eventType")?,
            "txnId": req.param_str("txnId")?,
            "q": req.query_param("q"),
        }),
    ))
}

#[derive(serde::Deserialize)]
struct Typed {
    n: u32,
}

async fn typed(_: Rc<State>, req: Request) -> HandlerResult {
    let t: Typed = req.json()?;
    Ok(Response::json(200, &json!({"n": t.n})))
}

async fn big(_: Rc<State>, _: Request) -> HandlerResult {
    Ok(Response::bytes(200, "text/plain", vec![b'x'; 100_000]))
}

async fn forbidden(_: Rc<State>, _: Request) -> HandlerResult {
    Err(MatrixError::forbidden("no"))
}

async fn trigger_shutdown(state: Rc<State>, _: Request) -> HandlerResult {
    state.shutdown.trigger();
    Ok(Response::json(200, &json!({})))
}

fn router() -> Router<State> {
    Router::new()
        .route(Method::Get, "/hello", hello)
        .route(Method::Post, "/echo", echo)
        .route(Method::Post, "/upload", echo)
        .body_limit(Method::Post, "/upload", 256 * 1024)
        .route(Method::Get, "/slow/{ms}", slow)
        .route(Method::Get, "/panic", panics)
        .route(
            Method::Put,
            "/rooms/{roomId}/send/{eventType}/{txnId}",
            send_event,
        )
        .route(Method::Post, "/typed", typed)
        .route(Method::Get, "/big", big)
        .route(Method::Get, "/forbidden", forbidden)
        .route(Method::Post, "/shutdown", trigger_shutdown)
}

fn test_config() -> HttpConfig {
    HttpConfig {
        max_header_bytes: 4096,
        max_body_bytes: 64 * 1024,
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        keepalive_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(2),
        max_connections: 100,
        shutdown_grace: Duration::from_secs(3),
    }
}

struct TestServer {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start(cfg: HttpConfig) -> TestServer {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let run = async move {
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
                tx.send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let shutdown = Shutdown::new();
                let state = Rc::new(State {
                    shutdown: shutdown.clone(),
                });
                serve(
                    listener,
                    Rc::new(router()),
                    state,
                    Rc::new(cfg),
                    shutdown,
                    None,
                )
                .await;
            };
            // io_uring, or epoll under HEARTH_TEST_LEGACY_DRIVER=1.
            driver::block_on_test_driver(run);
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started");
        TestServer {
            addr,
            thread: Some(thread),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        // Generous: a first panic symbolizes a backtrace, seconds under load.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s
    }

    /// Triggers shutdown through the test route and waits for `serve` to
    /// return.
    fn stop(mut self) {
        let mut c = self.connect();
        c.write_all(b"POST /shutdown HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let _ = read_response(&mut BufReader::new(c));
        self.thread.take().unwrap().join().unwrap();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// Reads one response (framed by Content-Length). `head_only` for HEAD.
fn read_response_opts(r: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(": ").expect("header line");
        headers.push((n.to_owned(), v.to_owned()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    if !head_only {
        let len: usize = resp
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        resp.body = vec![0; len];
        r.read_exact(&mut resp.body)?;
    }
    Ok(resp)
}

fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<Resp> {
    read_response_opts(r, false)
}

/// Sends raw bytes on a new connection and reads one response.
fn roundtrip(srv: &TestServer, raw: &[u8]) -> (Resp, BufReader<TcpStream>) {
    let mut c = srv.connect();
    c.write_all(raw).unwrap();
    let mut r = BufReader::new(c);
    let resp = read_response(&mut r).expect("response");
    (resp, r)
}

/// True if the server closed the connection (EOF or reset) within `within`.
fn closed_within(r: &mut BufReader<TcpStream>, within: Duration) -> bool {
    r.get_ref().set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn assert_cors(resp: &Resp) {
    assert_eq!(resp.header("access-control-allow-origin"), Some("*"));
    assert_eq!(
        resp.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, DELETE, OPTIONS")
    );
    assert_eq!(
        resp.header("access-control-allow-headers"),
        Some("X-Requested-With, Content-Type, Authorization")
    );
}

#[test]
fn keep_alive_serves_sequential_requests() {
    let srv = TestServer::start(test_config());
    let mut c = srv.connect();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for _ in 0..3 {
        c.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let resp = read_response(&mut r).unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json(), json!({"hello": "world"}));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.header("connection"), None);
        assert_cors(&resp);
    }
    srv.stop();
}

#[test]
fn pipelined_requests_answered_in_order() {
    let srv = TestServer::start(test_config());
    let mut c = srv.connect();
    let reqs = b"GET /slow/50 HTTP/1.1\r\n\r\n\
POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
GET /hello HTTP/1.1\r\n\r\n\
GET /nope HTTP/1.1\r\n\r\n\
GET /big HTTP/1.1\r\n\r\n\
POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz";
    c.write_all(reqs).unwrap();
    let mut r = BufReader::new(c);
    let a = read_response(&mut r).unwrap();
    assert_eq!(a.json(), json!({"slept": 50}));
    let b = read_response(&mut r).unwrap();
    assert_eq!(b.body, b"abc");
    let cc = read_response(&mut r).unwrap();
    assert_eq!(cc.json(), json!({"hello": "world"}));
    let d = read_response(&mut r).unwrap();
    assert_eq!(d.status, 404);
    let e = read_response(&mut r).unwrap();
    assert_eq!(e.body.len(), 100_000);
    let f = read_response(&mut r).unwrap();
    assert_eq!(f.body, b"xyz");
    srv.stop();
}

#[test]
fn chunked_body_with_trailers() {
    let srv = TestServer::start(test_config());
    let mut c = srv.connect();
    c.write_all(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n4\r\nWiki\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    c.write_all(b"5;ext=1\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\nGET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"Wikipedia");
    assert_eq!(resp.header("content-type"), Some("text/plain"));
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    srv.stop();
}

#[test]
fn oversized_headers_and_bodies_get_413() {
    let srv = TestServer::start(test_config());
    // Headers over max_header_bytes.
    let big = format!("GET /hello HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(8000));
    let (resp, mut r) = roundtrip(&srv, big.as_bytes());
    assert_eq!(resp.status, 431);
    assert_eq!(resp.json()["errcode"], "M_TOO_LARGE");
    assert_cors(&resp);
    assert!(closed_within(&mut r, Duration::from_secs(2)));

    // Content-Length over max_body_bytes: refused before the body is read.
    let (resp, mut r) = roundtrip(
        &srv,
        b"POST /echo HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n",
    );
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["errcode"], "M_TOO_LARGE");
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed_within(&mut r, Duration::from_secs(2)));

    // Chunked body growing over the limit.
    let mut c = srv.connect();
    c.write_all(b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("8000\r\n{}\r\n", "b".repeat(0x8000));
    let mut r = BufReader::new(c.try_clone().unwrap());
    for _ in 0..3 {
        if c.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["errcode"], "M_TOO_LARGE");
    srv.stop();
}

#[test]
fn upload_routes_have_their_own_body_limit_and_oversized_bodies_still_get_413() {
    let srv = TestServer::start(test_config());
    // Over the server-wide 64 KiB but within the route's 256 KiB.
    let body = vec![b'u'; 200 * 1024];
    let head = format!(
        "POST /upload HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut req = head.into_bytes();
    req.extend_from_slice(&body);
    let (resp, _) = roundtrip(&srv, &req);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body);
    // The same body to a route without its own limit.
    let mut to_echo = format!(
        "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    to_echo.extend_from_slice(&body);
    let (resp, _) = roundtrip(&srv, &to_echo);
    assert_eq!(resp.status, 413);

    // Far over the limit, the whole body written before reading (as most
    // clients do): the 413 must arrive, not a reset.
    let big = vec![b'b'; 4 * 1024 * 1024];
    let mut c = srv.connect();
    c.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&big)
        .expect("the server reads the refused body");
    let mut r = BufReader::new(c);
    let resp = read_response(&mut r).expect("a 413 response");
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["errcode"], "M_TOO_LARGE");
    assert!(closed_within(&mut r, Duration::from_secs(2)));
    srv.stop();
}

#[test]
fn stalled_client_is_closed_while_others_are_served() {
    let srv = TestServer::start(test_config());
    let mut stalled = srv.connect();
    stalled.write_all(b"GET /hello HTTP/1.1\r\nHo").unwrap();
    let started = Instant::now();
    // Another client is served meanwhile.
    let (resp, _) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() < Duration::from_millis(250));
    // The stalled one gets a 408 and is closed after the header timeout.
    let mut r = BufReader::new(stalled);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 408);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(closed_within(&mut r, Duration::from_secs(2)));
    assert!(started.elapsed() < Duration::from_secs(3));

    // A body that stalls halfway is cut off after the body timeout.
    let mut c = srv.connect();
    c.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let mut r = BufReader::new(c);
    assert_eq!(read_response(&mut r).unwrap().status, 408);
    srv.stop();
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let srv = TestServer::start(test_config());
    let (resp, mut r) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    let t = Instant::now();
    assert!(closed_within(&mut r, Duration::from_secs(3)));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed too early: {waited:?}"
    );
    // A silent client that never sends a byte is closed as well.
    let c = srv.connect();
    assert!(closed_within(
        &mut BufReader::new(c),
        Duration::from_secs(3)
    ));
    srv.stop();
}

#[test]
fn garbage_gets_400_and_server_keeps_serving() {
    let srv = TestServer::start(test_config());
    for garbage in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET nopath HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"POST /echo HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (resp, mut r) = roundtrip(&srv, garbage);
        assert_eq!(
            resp.status,
            400,
            "for {:?}",
            String::from_utf8_lossy(garbage)
        );
        assert_eq!(resp.json()["errcode"], "M_UNKNOWN");
        assert_cors(&resp);
        assert!(closed_within(&mut r, Duration::from_secs(2)));
    }
    let (resp, _) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    srv.stop();
}

#[test]
fn unknown_endpoint_and_wrong_method_shapes() {
    let srv = TestServer::start(test_config());
    let (resp, mut r) = roundtrip(&srv, b"GET /_matrix/nope HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 404);
    assert_eq!(
        resp.json(),
        json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"})
    );
    assert_cors(&resp);
    // The connection stays usable after a 404.
    r.get_mut()
        .write_all(b"DELETE /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 405);
    assert_eq!(resp.json()["errcode"], "M_UNRECOGNIZED");
    assert_eq!(resp.header("allow"), Some("GET"));
    r.get_mut()
        .write_all(b"GET /forbidden HTTP/1.1\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(
        resp.json(),
        json!({"errcode": "M_FORBIDDEN", "error": "no"})
    );
    srv.stop();
}

#[test]
fn options_preflight_on_any_path() {
    let srv = TestServer::start(test_config());
    for path in ["/hello", "/_matrix/client/v3/unknown", "*"] {
        let raw = format!(
            "OPTIONS {path} HTTP/1.1\r\nOrigin: https://app.example\r\nAccess-Control-Request-Method: PUT\r\n\r\n"
        );
        let (resp, _) = roundtrip(&srv, raw.as_bytes());
        assert_eq!(resp.status, 200, "OPTIONS {path}");
        assert_cors(&resp);
    }
    srv.stop();
}

#[test]
fn head_is_get_without_body() {
    let srv = TestServer::start(test_config());
    let mut c = srv.connect();
    c.write_all(b"HEAD /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c);
    let head = read_response_opts(&mut r, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("17"));
    // The next response starts right away: HEAD sent no body bytes.
    let get = read_response(&mut r).unwrap();
    assert_eq!(get.body.len(), 17);
    srv.stop();
}

#[test]
fn connection_close_and_http10() {
    let srv = TestServer::start(test_config());
    let (resp, mut r) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed_within(&mut r, Duration::from_secs(1)));

    let (resp, mut r) = roundtrip(&srv, b"GET /hello HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(closed_within(&mut r, Duration::from_secs(1)));

    let (resp, mut r) = roundtrip(
        &srv,
        b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    r.get_mut()
        .write_all(b"GET /hello HTTP/1.0\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    srv.stop();
}

#[test]
fn expect_continue_is_answered() {
    let srv = TestServer::start(test_config());
    let mut c = srv.connect();
    c.write_all(b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let cont = read_response_opts(&mut r, true).unwrap();
    assert_eq!(cont.status, 100);
    c.write_all(b"hello").unwrap();
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.body, b"hello");
    srv.stop();
}

#[test]
fn handler_panic_is_500_and_shard_survives() {
    let srv = TestServer::start(test_config());
    let (resp, mut r) = roundtrip(&srv, b"GET /panic HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 500);
    assert_eq!(resp.json()["errcode"], "M_UNKNOWN");
    r.get_mut()
        .write_all(b"GET /hello HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).unwrap().status, 200);
    let (resp, _) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    srv.stop();
}

#[test]
fn path_params_query_and_json_errors() {
    let srv = TestServer::start(test_config());
    let (resp, _) = roundtrip(
        &srv,
        b"PUT /rooms/%21abc%2Fdef%3Aex.org/send/m.room.message/t%201?q=a+b%26 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.json(),
        json!({"roomId": "!abc/def:ex.org", "eventType": "m.room.message", "txnId": "t 1", "q": "a b&"})
    );
    let (resp, _) = roundtrip(&srv, b"GET /slow/abc HTTP/1.1\r\n\r\n");
    assert_eq!(
        (resp.status, resp.json()["errcode"].clone()),
        (400, json!("M_INVALID_PARAM"))
    );
    let (resp, _) = roundtrip(
        &srv,
        b"POST /typed HTTP/1.1\r\nContent-Length: 4\r\n\r\nnope",
    );
    assert_eq!(
        (resp.status, resp.json()["errcode"].clone()),
        (400, json!("M_NOT_JSON"))
    );
    let (resp, _) = roundtrip(
        &srv,
        b"POST /typed HTTP/1.1\r\nContent-Length: 8\r\n\r\n{\"n\":-1}",
    );
    assert_eq!(
        (resp.status, resp.json()["errcode"].clone()),
        (400, json!("M_BAD_JSON"))
    );
    let (resp, _) = roundtrip(
        &srv,
        b"POST /typed HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"n\":7}",
    );
    assert_eq!(resp.json(), json!({"n": 7}));
    srv.stop();
}

#[test]
fn graceful_shutdown_finishes_in_flight_requests() {
    let mut srv = TestServer::start(test_config());
    let addr = srv.addr;
    // An idle keep-alive connection: closed as soon as shutdown starts.
    let (_, mut idle) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    // A slow request in flight.
    let mut slow = srv.connect();
    slow.write_all(b"GET /slow/600 HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (resp, _) = roundtrip(&srv, b"POST /shutdown HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(closed_within(&mut idle, Duration::from_millis(300)));
    // New connections are refused once the listener is closed.
    std::thread::sleep(Duration::from_millis(50));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    // The in-flight request completes, with Connection: close.
    let mut r = BufReader::new(slow);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.json(), json!({"slept": 600}));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(closed_within(&mut r, Duration::from_secs(1)));
    // `serve` returned.
    srv.thread.take().unwrap().join().unwrap();
}

#[test]
fn graceful_shutdown_gives_up_after_grace() {
    let cfg = HttpConfig {
        shutdown_grace: Duration::from_millis(200),
        ..test_config()
    };
    let mut srv = TestServer::start(cfg);
    let mut slow = srv.connect();
    slow.write_all(b"GET /slow/5000 HTTP/1.1\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    let _ = roundtrip(&srv, b"POST /shutdown HTTP/1.1\r\n\r\n");
    srv.thread.take().unwrap().join().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "serve did not return after grace"
    );
    assert!(closed_within(
        &mut BufReader::new(slow),
        Duration::from_secs(1)
    ));
}

#[test]
fn connection_cap_answers_503() {
    let cfg = HttpConfig {
        max_connections: 2,
        keepalive_timeout: Duration::from_secs(5),
        ..test_config()
    };
    let srv = TestServer::start(cfg);
    let (_, a) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    let (_, b) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    let mut c = srv.connect();
    let _ = c.write_all(b"GET /hello HTTP/1.1\r\n\r\n");
    let mut r = BufReader::new(c);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json()["errcode"], "M_LIMIT_EXCEEDED");
    assert!(closed_within(&mut r, Duration::from_secs(1)));
    // Freeing a slot lets new connections in again.
    a.get_ref().shutdown(NetShutdown::Both).unwrap();
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let (resp, _) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    drop(b);
    srv.stop();
}

#[test]
fn slow_handler_does_not_block_other_connections_or_earlier_responses() {
    let srv = TestServer::start(test_config());
    let mut a = srv.connect();
    // Pipelined: a fast request, then a slow one. The fast answer must not
    // wait for the slow handler.
    a.write_all(b"GET /hello HTTP/1.1\r\n\r\nGET /slow/400 HTTP/1.1\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    let mut ra = BufReader::new(a);
    assert_eq!(read_response(&mut ra).unwrap().status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Another connection is served while the slow handler runs.
    let (resp, _) = roundtrip(&srv, b"GET /hello HTTP/1.1\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        read_response(&mut ra).unwrap().json(),
        json!({"slept": 400})
    );
    srv.stop();
}

#[test]
fn large_body_in_pieces() {
    let srv = TestServer::start(test_config());
    let mut c = srv.connect();
    let body: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(
        format!(
            "POST /echo HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    for part in body.chunks(7000) {
        c.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut r = BufReader::new(c);
    let resp = read_response(&mut r).unwrap();
    assert_eq!(resp.body, body);
    srv.stop();
}
