//! The simulated remote homeserver of `fed-ingest`: its own ed25519 key, a
//! TLS listener on loopback named `localhost:<port>` that serves its key at
//! `/_matrix/key/v2/server` (self-signed, as a real server's) and answers
//! transactions sent to it (`PUT /send/…` → `{"pdus": {}}`, so the target
//! does not back off); everything else is `404 M_UNRECOGNIZED`. Plain
//! threads and rustls, so it costs nothing measurable during the run (the
//! target fetches the key once and caches it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use hearth::events::ServerKey;
use serde_json::{json, Value};

pub struct RemoteServer {
    pub name: String,
    pub key: Arc<ServerKey>,
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
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(tcp) = conn else { continue };
                let (cfg, key_body) = (cfg.clone(), key_body.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(120)));
                    let Ok(tls) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    serve(rustls::StreamOwned::new(tls, tcp), &key_body);
                });
            }
        });
        Ok(RemoteServer { name, key })
    }
}

fn serve<S: Read + Write>(stream: S, key_body: &[u8]) {
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
        let (status, answer): (u16, Vec<u8>) = if path.starts_with("/_matrix/key/v2/server") {
            (200, key_body.to_vec())
        } else if method == "PUT" && path.starts_with("/_matrix/federation/v1/send/") {
            (200, br#"{"pdus":{}}"#.to_vec())
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
