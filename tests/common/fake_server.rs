//! A federation server of the tests' own: its own ed25519 key, a TLS
//! listener on loopback named `localhost:<port>`, its key served at
//! `/_matrix/key/v2/server` (self-signed, as a real server's), and every
//! other request answered by a handler the test sets and can change (to
//! be slow, wrong or down). Every request it receives is recorded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hearth::events::ServerKey;
use serde_json::{json, Value};

/// A request the fake server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: Value,
}

const RAW_BODY: &str = "__raw_body";
const RAW_TYPE: &str = "__raw_content_type";
const RAW_HEX: &str = "__raw_body_hex";
const HOSTILE: &str = "__hostile";

/// How a hostile answer misbehaves on the wire (see [`hostile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Reads the request, then says nothing for a minute.
    Stall,
    /// Sends a 200 head announcing 1000 bytes, one byte of body, then stalls.
    StallBody,
    /// Resets the connection (RST) instead of answering.
    Reset,
    /// Answers bytes that are not HTTP, then closes.
    Garbage,
    /// A well-framed 200 whose body is not JSON.
    BadJson,
    /// Announces 1000 bytes of body, sends 10, then closes.
    ShortBody,
    /// A 200 with no length, then an endless body (until the reader leaves).
    Endless,
    /// The same, chunked.
    EndlessChunked,
}

impl Hostile {
    fn name(self) -> &'static str {
        match self {
            Hostile::Stall => "stall",
            Hostile::StallBody => "stall_body",
            Hostile::Reset => "reset",
            Hostile::Garbage => "garbage",
            Hostile::BadJson => "bad_json",
            Hostile::ShortBody => "short_body",
            Hostile::Endless => "endless",
            Hostile::EndlessChunked => "endless_chunked",
        }
    }

    fn from_name(s: &str) -> Option<Hostile> {
        [
            Hostile::Stall,
            Hostile::StallBody,
            Hostile::Reset,
            Hostile::Garbage,
            Hostile::BadJson,
            Hostile::ShortBody,
            Hostile::Endless,
            Hostile::EndlessChunked,
        ]
        .into_iter()
        .find(|h| h.name() == s)
    }
}

/// A handler answer that misbehaves on the wire instead of answering.
pub fn hostile(how: Hostile) -> (u16, Value) {
    let mut m = serde_json::Map::new();
    m.insert(HOSTILE.into(), how.name().into());
    (200, Value::Object(m))
}

/// A handler answer sent as `body` with `content_type` instead of JSON
/// (e.g. the multipart answers of the federation media endpoints).
pub fn raw_answer(content_type: &str, body: &str) -> Value {
    let mut m = serde_json::Map::new();
    m.insert(RAW_BODY.into(), body.into());
    m.insert(RAW_TYPE.into(), content_type.into());
    Value::Object(m)
}

/// A handler answer of any bytes (an image, say) with `content_type`.
#[allow(dead_code)]
pub fn raw_bytes_answer(content_type: &str, body: &[u8]) -> Value {
    let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
    let mut m = serde_json::Map::new();
    m.insert(RAW_HEX.into(), hex.into());
    m.insert(RAW_TYPE.into(), content_type.into());
    Value::Object(m)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// `None`: 404 `M_UNRECOGNIZED`.
pub type Handler = Box<dyn Fn(&Received) -> Option<(u16, Value)> + Send + Sync>;

pub struct FakeServer {
    pub name: String,
    pub port: u16,
    pub key: Arc<ServerKey>,
    handler: Arc<Mutex<Arc<Handler>>>,
    pub log: Arc<Mutex<Vec<Received>>>,
    /// Body bytes written by hostile endless answers (how much the reader
    /// took before it gave up).
    pub hostile_bytes: Arc<AtomicU64>,
}

impl FakeServer {
    /// Starts serving on a free loopback port; key seed `seed`.
    pub fn start(seed: u8) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let name = format!("localhost:{port}");
        let key = Arc::new(
            ServerKey::from_seed(
                name.as_str().try_into().unwrap(),
                &format!("fake{seed}"),
                &[seed; 32],
            )
            .unwrap(),
        );
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let chain = vec![cert.cert.der().clone()];
        let pk = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, pk)
        .unwrap();
        let cfg = Arc::new(cfg);
        let handler: Arc<Mutex<Arc<Handler>>> = Arc::new(Mutex::new(Arc::new(Box::new(|_| None))));
        let log = Arc::new(Mutex::new(Vec::new()));
        let hostile_bytes = Arc::new(AtomicU64::new(0));
        let key_body = {
            let now = hearth::primitives::unix_ms();
            serde_json::to_value(key.key_server_response(now, 86_400_000).unwrap()).unwrap()
        };
        {
            let (handler, log, bytes) = (handler.clone(), log.clone(), hostile_bytes.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(tcp) = conn else { continue };
                    let (cfg, handler, log, key_body, bytes) = (
                        cfg.clone(),
                        handler.clone(),
                        log.clone(),
                        key_body.clone(),
                        bytes.clone(),
                    );
                    std::thread::spawn(move || {
                        let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
                        let Ok(tls) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        let stream = rustls::StreamOwned::new(tls, tcp);
                        serve(stream, &handler, &log, &key_body, &bytes);
                    });
                }
            });
        }
        FakeServer {
            name,
            port,
            key,
            handler,
            log,
            hostile_bytes,
        }
    }

    /// Answers every request (other than the key one) with `h`.
    pub fn handle(&self, h: impl Fn(&Received) -> Option<(u16, Value)> + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(Box::new(h));
    }

    /// The current handler, to chain a new one in front of it.
    pub fn handler_snapshot(&self) -> Arc<Handler> {
        self.handler.lock().unwrap().clone()
    }

    /// The requests received so far whose path starts with `prefix`.
    pub fn requests(&self, prefix: &str) -> Vec<Received> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>;

fn serve(
    stream: Tls,
    handler: &Mutex<Arc<Handler>>,
    log: &Mutex<Vec<Received>>,
    key_body: &Value,
    hostile_bytes: &AtomicU64,
) {
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, path) = (method.to_owned(), path.to_owned());
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let req = Received {
            method,
            path,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        log.lock().unwrap().push(req.clone());
        let (status, answer) = if req.path.starts_with("/_matrix/key/v2/server") {
            (200, key_body.clone())
        } else {
            // Not under the lock: a stalling handler stalls only its caller.
            let h = handler.lock().unwrap().clone();
            h(&req).unwrap_or((
                404,
                json!({"errcode": "M_UNRECOGNIZED", "error": "not here"}),
            ))
        };
        if let Some(how) = answer
            .get(HOSTILE)
            .and_then(Value::as_str)
            .and_then(Hostile::from_name)
        {
            return misbehave(r.into_inner(), how, hostile_bytes);
        }
        let raw = match (
            answer.get(RAW_BODY).and_then(Value::as_str),
            answer.get(RAW_HEX).and_then(Value::as_str),
        ) {
            (Some(body), _) => Some(body.as_bytes().to_vec()),
            (None, Some(hex)) => Some(unhex(hex)),
            (None, None) => None,
        };
        let (content_type, bytes) = match raw {
            Some(body) => (
                answer[RAW_TYPE]
                    .as_str()
                    .unwrap_or("application/octet-stream")
                    .to_owned(),
                body,
            ),
            None => (
                "application/json".to_owned(),
                serde_json::to_vec(&answer).unwrap(),
            ),
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        );
        let w = r.get_mut();
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&bytes).is_err() {
            return;
        }
        let _ = w.flush();
    }
}

/// Plays one [`Hostile`] answer, then drops the connection.
fn misbehave(mut s: Tls, how: Hostile, written: &AtomicU64) {
    const JSON_200: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n";
    let stall = || std::thread::sleep(Duration::from_secs(60));
    let _ = match how {
        Hostile::Stall => {
            let _ = s.flush();
            stall();
            Ok(())
        }
        Hostile::StallBody => {
            let _ = write!(s, "{JSON_200}Content-Length: 1000\r\n\r\n{{");
            let _ = s.flush();
            stall();
            Ok(())
        }
        Hostile::Reset => {
            use std::os::fd::AsRawFd;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on our own socket with a valid struct;
            // closing it then sends RST instead of FIN.
            unsafe {
                libc::setsockopt(
                    s.sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            Ok(())
        }
        Hostile::Garbage => s
            .write_all(b"\x16\x03\x01 SSH-2.0-garbage\0\xff\xfe not http at all\r\n\r\n")
            .and_then(|_| s.flush()),
        Hostile::BadJson => {
            let body = "{\"displayname\": \"cut";
            write!(s, "{JSON_200}Content-Length: {}\r\n\r\n{body}", body.len())
                .and_then(|_| s.flush())
        }
        Hostile::ShortBody => {
            write!(s, "{JSON_200}Content-Length: 1000\r\n\r\n{{\"a\": 1").and_then(|_| s.flush())
        }
        Hostile::Endless | Hostile::EndlessChunked => {
            let chunked = how == Hostile::EndlessChunked;
            let framing = if chunked {
                "Transfer-Encoding: chunked\r\n"
            } else {
                "Connection: close\r\n"
            };
            // The body opens a JSON array; chunked, that byte is a chunk
            // of its own (a bare `[` would be an invalid chunk size, and
            // hearth would stop before the body cap is reached).
            let open = if chunked { "1\r\n[\r\n" } else { "[" };
            let mut res = write!(s, "{JSON_200}{framing}\r\n{open}");
            let piece = vec![b' '; 64 * 1024];
            while res.is_ok() {
                res = if chunked {
                    write!(s, "{:x}\r\n", piece.len())
                        .and_then(|_| s.write_all(&piece))
                        .and_then(|_| s.write_all(b"\r\n"))
                } else {
                    s.write_all(&piece)
                };
                if res.is_ok() {
                    written.fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
            }
            res
        }
    };
}
