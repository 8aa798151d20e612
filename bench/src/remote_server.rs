//! The simulated remote homeserver of `fed-ingest`: its own ed25519 key, a
//! TLS listener on loopback named `localhost:<port>` that serves its key at
//! `/_matrix/key/v2/server` (self-signed, as a real server's), answers
//! transactions sent to it (`PUT /send/…` → `{"pdus": {}}`, so the target
//! does not back off), and serves its own PDUs as a real origin does
//! (`GET /event/{id}`, `POST /get_missing_events/{room}`, and
//! `GET /state_ids/{room}` = the room's state after the joins, which is the
//! state at every message: a target that processes a transaction's PDUs
//! out of order asks for these — Synapse does); everything
//! else is `404 M_UNRECOGNIZED`. `fed-fanout` reads when each message
//! (by its body) first arrived in a transaction (`received`). Plain
//! threads and rustls, so it costs nothing measurable during the run (the
//! target fetches the key once and caches it).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hearth::events::ServerKey;
use serde_json::{json, Value};

/// The PDUs the remote has sent, by event id.
pub type Store = Arc<RwLock<HashMap<String, Value>>>;

/// Routes a scenario serves itself, asked first: (method, path with query,
/// body) → (status, JSON body), or `None` for the common routes.
pub type Route = dyn Fn(&str, &str, &[u8]) -> Option<(u16, Vec<u8>)> + Send + Sync;
pub type Handler = Arc<Route>;

/// When each `m.room.message` (by `content.body`) first arrived here.
pub type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

pub struct RemoteServer {
    pub name: String,
    pub key: Arc<ServerKey>,
    pub store: Store,
    /// The room's state event ids (one room per remote).
    pub state_ids: Arc<RwLock<Vec<String>>>,
    pub received: Arrivals,
    routes: Arc<RwLock<Option<Handler>>>,
}

impl RemoteServer {
    /// Starts serving on a free loopback port; key id `ed25519:<key_id>`,
    /// a key from `seed` (random per run: Synapse caches a server's keys by
    /// key id until they expire).
    pub fn start(key_id: &str, seed: [u8; 32]) -> anyhow::Result<RemoteServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let name = format!("localhost:{port}");
        let key = Arc::new(
            ServerKey::from_seed(
                name.as_str()
                    .try_into()
                    .map_err(|e| anyhow::anyhow!("server name {name}: {e}"))?,
                key_id,
                &seed,
            )
            .map_err(|e| anyhow::anyhow!("remote key: {e}"))?,
        );
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let chain = vec![cert.cert.der().clone()];
        let pk = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, pk)?;
        let cfg = Arc::new(cfg);
        let now = hearth::primitives::unix_ms();
        let key_body = serde_json::to_vec(
            &key.key_server_response(now, 86_400_000)
                .map_err(|e| anyhow::anyhow!("key response: {e}"))?,
        )?;
        let key_body = Arc::new(key_body);
        let store: Store = Arc::default();
        let state_ids: Arc<RwLock<Vec<String>>> = Arc::default();
        let received: Arrivals = Arc::default();
        let routes: Arc<RwLock<Option<Handler>>> = Arc::default();
        let (store2, name2, state2, recv2, routes2) = (
            store.clone(),
            name.clone(),
            state_ids.clone(),
            received.clone(),
            routes.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (cfg, key_body, store, name, state, recv) = (
                    cfg.clone(),
                    key_body.clone(),
                    store2.clone(),
                    name2.clone(),
                    state2.clone(),
                    recv2.clone(),
                );
                let routes = routes2.read().unwrap_or_else(|e| e.into_inner()).clone();
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(120)));
                    let Ok(tls) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    serve(
                        rustls::StreamOwned::new(tls, tcp),
                        &key_body,
                        &store,
                        &name,
                        &state,
                        &recv,
                        routes.as_deref(),
                    );
                });
            }
        });
        Ok(RemoteServer {
            name,
            key,
            store,
            state_ids,
            received,
            routes,
        })
    }

    /// Routes of a scenario's own (a hosted room), asked before the common
    /// ones on connections accepted from now on.
    pub fn set_routes(&self, h: Handler) {
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = Some(h);
    }
}

/// `/get_missing_events`: walking back from `latest_events` over
/// prev_events, up to `limit` (default 10) events not in `earliest_events`.
fn missing_events(store: &Store, body: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let earliest: HashSet<String> = ids("earliest_events").into_iter().collect();
    let limit = v["limit"].as_u64().unwrap_or(10).min(100) as usize;
    let store = store.read().unwrap_or_else(|e| e.into_inner());
    let prevs = |id: &str| -> Vec<String> {
        store.get(id).map_or(Vec::new(), |p| {
            p["prev_events"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
    };
    let mut queue: Vec<String> = ids("latest_events").iter().flat_map(|l| prevs(l)).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(id) = queue.pop() {
        if out.len() >= limit {
            break;
        }
        if earliest.contains(&id) || !seen.insert(id.clone()) {
            continue;
        }
        if let Some(p) = store.get(&id) {
            out.push(p.clone());
            queue.extend(prevs(&id));
        }
    }
    json!({ "events": out })
}

/// Records the first arrival of each message of a transaction.
fn note_arrivals(body: &[u8], received: &Mutex<HashMap<String, Instant>>) {
    let now = Instant::now();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let Some(pdus) = v["pdus"].as_array() else {
        return;
    };
    let mut seen = received.lock().unwrap_or_else(|e| e.into_inner());
    for p in pdus {
        if p["type"] == "m.room.message" {
            if let Some(b) = p["content"]["body"].as_str() {
                seen.entry(b.to_owned()).or_insert(now);
            }
        }
    }
}

fn serve<S: Read + Write>(
    stream: S,
    key_body: &[u8],
    store: &Store,
    name: &str,
    state: &RwLock<Vec<String>>,
    received: &Mutex<HashMap<String, Instant>>,
    routes: Option<&Route>,
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
        let own = routes.and_then(|h| h(&method, &path, &body));
        let (status, answer): (u16, Vec<u8>) = if let Some(a) = own {
            a
        } else if path.starts_with("/_matrix/key/v2/server") {
            (200, key_body.to_vec())
        } else if method == "PUT" && path.starts_with("/_matrix/federation/v1/send/") {
            note_arrivals(&body, received);
            (200, br#"{"pdus":{}}"#.to_vec())
        } else if path.starts_with("/_matrix/federation/v1/get_missing_events/") {
            (200, missing_events(store, &body).to_string().into_bytes())
        } else if path.starts_with("/_matrix/federation/v1/state_ids/") {
            let ids = state.read().unwrap_or_else(|e| e.into_inner()).clone();
            let v = json!({"pdu_ids": ids, "auth_chain_ids": []});
            (200, v.to_string().into_bytes())
        } else if let Some(id) = path.strip_prefix("/_matrix/federation/v1/event/") {
            let id = percent_decode(id);
            let found = store
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .cloned();
            match found {
                Some(p) => {
                    let v = json!({"origin": name, "origin_server_ts": hearth::primitives::unix_ms(), "pdus": [p]});
                    (200, v.to_string().into_bytes())
                }
                None => (
                    404,
                    br#"{"errcode":"M_NOT_FOUND","error":"unknown event"}"#.to_vec(),
                ),
            }
        } else {
            let v: Value = json!({"errcode": "M_UNRECOGNIZED", "error": "not here"});
            (404, v.to_string().into_bytes())
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        let w = r.get_mut();
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&answer).is_err() {
            return;
        }
        let _ = w.flush();
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
