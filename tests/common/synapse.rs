//! A real Synapse (PyPI, pinned by `scripts/ensure-synapse.sh`, SQLite)
//! for the interop tests, configured as
//! /work/shared/notes/synapse-as-a-peer.md says loopback federation needs,
//! plus open registration and rate limits raised. A missing python or a
//! failed install fails the test: it never skips.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fed::{free_port, write_cert};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub fn synapse_python() -> String {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/scripts/ensure-synapse.sh"))
        .output()
        .expect("run scripts/ensure-synapse.sh");
    assert!(
        out.status.success(),
        "scripts/ensure-synapse.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

pub struct Synapse {
    child: Child,
    pub name: String,
    pub client: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Config as /work/shared/notes/synapse-as-a-peer.md says loopback
/// federation needs: explicit-port server name, TLS federation listener,
/// no certificate checks, loopback allowed, no notaries.
pub fn start_synapse(py: &str) -> Synapse {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let (cert, key) = write_cert(dir.path());
    let fed_port = free_port();
    let client_port = free_port();
    let name = format!("localhost:{fed_port}");
    let config = format!(
        r#"
server_name: "{name}"
pid_file: "{d}/homeserver.pid"
listeners:
  - port: {fed_port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: true
    resources: [{{names: [federation], compress: false}}]
  - port: {client_port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    resources: [{{names: [client, federation], compress: false}}]
tls_certificate_path: "{cert}"
tls_private_key_path: "{key}"
database:
  name: sqlite3
  args: {{database: "{d}/homeserver.db"}}
media_store_path: "{d}/media"
signing_key_path: "{d}/signing.key"
report_stats: false
trusted_key_servers: []
suppress_key_server_warning: true
federation_verify_certificates: false
ip_range_whitelist: ["127.0.0.0/8"]
federation_ip_range_blacklist: []
registration_shared_secret: "s3cret"
macaroon_secret_key: "m4caroon"
form_secret: "f0rm"
enable_metrics: false
presence: {{enabled: false}}
enable_registration: true
enable_registration_without_verification: true
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_joins: {{local: {{per_second: 1000, burst_count: 1000}}, remote: {{per_second: 1000, burst_count: 1000}}}}
rc_joins_per_room: {{per_second: 1000, burst_count: 1000}}
rc_invites: {{per_room: {{per_second: 1000, burst_count: 1000}}, per_user: {{per_second: 1000, burst_count: 1000}}, per_issuer: {{per_second: 1000, burst_count: 1000}}}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
rc_room_creation: {{per_second: 1000, burst_count: 1000}}
rc_federation: {{window_size: 1000, sleep_limit: 1000, sleep_delay: 0, reject_limit: 1000, concurrent: 1000}}
federation:
  destination_min_retry_interval: 1s
  destination_max_retry_interval: 5s
"#
    );
    let cfg = dir.path().join("homeserver.yaml");
    std::fs::write(&cfg, config).unwrap();
    let gen = Command::new(py)
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(&cfg)
        .arg("--generate-keys")
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let child = Command::new(py)
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let client: std::net::SocketAddr = format!("127.0.0.1:{client_port}").parse().unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if std::net::TcpStream::connect(client).is_ok()
            && syn_get(client, "/_matrix/client/versions").0 == 200
        {
            break;
        }
        assert!(Instant::now() < until, "Synapse did not come up");
        std::thread::sleep(Duration::from_millis(250));
    }
    Synapse {
        child,
        name,
        client,
        _dir: dir,
    }
}

/// `GET` against Synapse's plain client listener. HTTP/1.0, so Twisted
/// frames the body by closing (it chunks HTTP/1.1 answers).
pub fn syn_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out[split + 4..].to_vec())
}

pub fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

/// A client-API request to Synapse's plain listener (HTTP/1.0, so Twisted
/// frames the body by closing): (status, JSON body).
pub fn syn_call(
    syn: &Synapse,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(syn.client).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        bytes.len()
    )
    .unwrap();
    s.write_all(&bytes).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_slice(&out[split + 4..]).unwrap_or(Value::Null),
    )
}

/// Registers `local` on Synapse (m.login.dummy): (user id, access token).
pub fn syn_register(syn: &Synapse, local: &str) -> (String, String) {
    let body = serde_json::json!({
        "username": local,
        "password": "correct horse battery",
        "auth": {"type": "m.login.dummy"},
    });
    let (status, v) = syn_call(
        syn,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(&body),
    );
    assert_eq!(status, 200, "register {local} on Synapse: {v}");
    (
        v["user_id"].as_str().unwrap().to_owned(),
        v["access_token"].as_str().unwrap().to_owned(),
    )
}
