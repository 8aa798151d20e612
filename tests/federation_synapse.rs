//! Interop with a real Synapse (PyPI, pinned by `scripts/ensure-synapse.sh`,
//! SQLite) over TLS on loopback, both directions of the transport:
//! - Synapse as a notary fetches hearth's `/_matrix/key/v2/server` over
//!   TLS, checks it and serves it co-signed;
//! - a Synapse profile lookup of a hearth user is a signed federation
//!   request hearth authenticates (fetching Synapse's key);
//! - hearth signs a request to Synapse, which accepts the signature.
//!
//! A missing python or a failed install fails the test: it never skips.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call, enc, Hearth, Opts};
use hearth::config::FederationSection;
use hearth::db::testing::TestCluster;
use hearth::events::ServerKey;
use hearth::federation::Federation;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn synapse_python() -> String {
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

fn write_cert(dir: &Path) -> (String, String) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let c = dir.join("tls.crt");
    let k = dir.join("tls.key");
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Synapse {
    child: Child,
    name: String,
    client: std::net::SocketAddr,
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
fn start_synapse(py: &str) -> Synapse {
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
fn syn_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
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

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(b)))
}

#[test]
fn synapse_and_hearth_authenticate_each_other() {
    let py = synapse_python();
    let syn = start_synapse(&py);

    let db_url = TestCluster::shared().fresh_database().url();
    let port = free_port();
    let hname = format!("localhost:{port}");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(certs.path());
    let h = Hearth::start(
        Opts::shards(2)
            .env("HEARTH_DATABASE__URL", &db_url)
            .env("HEARTH_SERVER_NAME", &hname)
            .env("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1")
            .env("HEARTH_LISTENERS__1__PORT", &port.to_string())
            .env("HEARTH_LISTENERS__1__KIND", "federation")
            .env("HEARTH_LISTENERS__1__TLS_CERTIFICATE", &cert)
            .env("HEARTH_LISTENERS__1__TLS_PRIVATE_KEY", &key)
            .env(
                "HEARTH_FEDERATION__ALLOW_IP_RANGES",
                r#"["127.0.0.0/8", "::1/128"]"#,
            )
            .env("HEARTH_FEDERATION__VERIFY_PEER_TLS", "false"),
    );
    let alice = common::register_user(&h, "alice");
    let r = call(
        &h,
        "PUT",
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.id)),
        &alice.token,
        Some(json!({"displayname": "Alice of hearth"})),
    );
    assert_eq!(r.status, 200);
    let hkey = ServerKey::load_or_create(h.data_dir.path(), &hname).unwrap();

    // 1. Synapse, as a notary, fetches and co-signs hearth's keys.
    // Synapse's notary fetches on a cache miss only when a key id is named
    // (an "all keys" query answers from its cache alone).
    let (status, body) = syn_get(
        syn.client,
        &format!(
            "/_matrix/key/v2/query/{hname}/{}",
            enc(hkey.key_id.as_str())
        ),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v = json_of(&body);
    let entry = &v["server_keys"][0];
    assert_eq!(entry["server_name"], hname.as_str(), "{v}");
    assert_eq!(
        entry["verify_keys"][hkey.key_id.as_str()]["key"],
        hkey.public_key_base64()
    );
    assert!(entry["signatures"][&hname][hkey.key_id.as_str()].is_string());
    assert!(
        entry["signatures"][&syn.name].is_object(),
        "co-signed by Synapse: {v}"
    );

    // 2. Synapse asks hearth for a profile over federation (signed by
    //    Synapse; hearth fetches Synapse's key to check it).
    let (status, body) = syn_get(
        syn.client,
        &format!("/_matrix/client/v3/profile/{}", enc(&alice.id)),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["displayname"], "Alice of hearth");

    // 3. hearth signs a request to Synapse; Synapse accepts the signature
    //    (404: no such user, not 401) after fetching hearth's key.
    let cfg = FederationSection {
        allow_ip_ranges: vec!["127.0.0.0/8".into()],
        verify_peer_tls: false,
        ..FederationSection::default()
    };
    let tls = hearth::federation::tls::client_config(false).unwrap();
    let fed = Rc::new(Federation::new(
        Arc::new(hkey),
        Arc::new(Vec::new()),
        tls,
        &cfg,
        Vec::new(),
    ));
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let nobody = format!("@nobody:{}", syn.name);
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc(&nobody)
        );
        let r = fed.request(&syn.name, "GET", &path, None).await.unwrap();
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(json_of(&r.body)["errcode"], "M_NOT_FOUND");
        // An unsigned one is refused by Synapse.
        let r = fed
            .send_raw(&syn.name, "GET", &path, &[], None, 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        // And hearth's key store accepts Synapse's key response.
        let keys = fed.server_keys(&syn.name, 0).await.unwrap();
        assert!(!keys.verify_keys.is_empty());
    });
}
