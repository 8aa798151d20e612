//! End-to-end tests of the `hearth` binary: config handling, shards and IO
//! drivers, the first endpoints, graceful shutdown. Real process, real sockets.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{get, read_response, Hearth, Opts};

fn io_uring_allowed() -> bool {
    // The same probe monoio uses: can this process set up a ring at all?
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() == "0")
        .unwrap_or(true)
        && monoio::utils::detect_uring()
}

#[test]
fn versions_and_health_are_served() {
    let h = Hearth::start(Opts::shards(2));
    let r = get(&h, "/_matrix/client/versions");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    let versions = v["versions"].as_array().expect("versions array");
    assert!(versions.iter().any(|x| x == "v1.1"));
    assert!(v["unstable_features"].is_object());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    let r = get(&h, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"OK");

    let r = get(&h, "/_matrix/client/v3/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["errcode"], "M_UNRECOGNIZED");
    let mut s = h.connect();
    write!(
        s,
        "POST /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let r = read_response(&mut s, false);
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["errcode"], "M_UNRECOGNIZED");
}

#[test]
fn default_driver_holds_io_uring_instances() {
    let mut h = Hearth::start(Opts::shards(2));
    if io_uring_allowed() {
        h.wait_for_log("io driver: io_uring", Duration::from_secs(5));
        // One ring per shard at least.
        assert!(h.io_uring_fds() >= 2, "io_uring fds: {}", h.io_uring_fds());
    } else {
        h.wait_for_log("io driver: epoll", Duration::from_secs(5));
    }
    assert_eq!(get(&h, "/health").status, 200);
}

#[test]
fn epoll_by_config_serves_the_same() {
    let mut h = Hearth::start(Opts::shards(2).env("HEARTH_IO_DRIVER", "epoll"));
    h.wait_for_log("io driver: epoll", Duration::from_secs(5));
    assert_eq!(h.io_uring_fds(), 0);
    let r = get(&h, "/_matrix/client/versions");
    assert_eq!(r.status, 200);
    // keep-alive + pipelining on the epoll driver too
    let mut s = h.connect();
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_response(&mut s, false).body, b"OK");
    assert_eq!(read_response(&mut s, false).status, 200);
}

#[test]
fn seccomp_blocked_io_uring_falls_back_to_epoll() {
    let mut h = Hearth::start(Opts {
        shards: 2,
        deny_io_uring: true,
        ..Opts::default()
    });
    let line = h.wait_for_log("io driver: epoll", Duration::from_secs(5));
    assert!(line.contains("reason"), "{line}");
    assert_eq!(h.io_uring_fds(), 0);
    assert_eq!(get(&h, "/_matrix/client/versions").status, 200);
}

#[test]
fn sigterm_shuts_down_gracefully_with_exit_0() {
    let mut h = Hearth::start(Opts::shards(2));
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = h.connect();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle, false).status, 200);
    h.signal(libc::SIGTERM);
    assert_eq!(h.wait_exit(Duration::from_secs(15)), Some(0));
    h.wait_for_log("stopped", Duration::from_secs(2));
}

#[test]
fn sigint_also_exits_0() {
    let mut h = Hearth::start(Opts::shards(1));
    h.signal(libc::SIGINT);
    assert_eq!(h.wait_exit(Duration::from_secs(15)), Some(0));
}

fn hearth_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn check_config_accepts_and_rejects_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "server_name = \"example.org\"\nshards = 2\n[[listeners]]\nport = 8448\nkind = \"federation\"\n",
    )
    .unwrap();
    let out = hearth_cmd()
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("federation"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "server_name = \"example.org\"\n[log]\nlevle = \"info\"\n",
    )
    .unwrap();
    let out = hearth_cmd()
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("levle"), "{err}");

    let out = hearth_cmd()
        .args(["check-config", "--config"])
        .arg(&good)
        .env("HEARTH_HTTP__MAX_BODY_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.max_body_bytes"), "{err}");

    // serve refuses to start on a bad config, naming the key.
    let out = hearth_cmd()
        .args(["serve", "--config"])
        .arg(&good)
        .env("HEARTH_SHARDS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("shards"));
}

#[test]
fn help_documents_the_config() {
    let out = hearth_cmd().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("serve") && text.contains("check-config"),
        "{text}"
    );
    assert!(text.contains("HEARTH_SECTION__KEY"), "{text}");
    assert!(text.contains("[database]"), "{text}");
}

#[test]
fn busy_port_fails_start_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = hearth_cmd()
        .arg("serve")
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_LISTENERS__0__PORT", port.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&port.to_string()), "{err}");
}

#[test]
fn json_logs_with_access_lines_and_request_spans() {
    let mut h = Hearth::start(Opts::shards(1).env("HEARTH_LOG__FORMAT", "json"));
    assert_eq!(
        get(&h, "/_matrix/client/versions?access_token=s3cret").status,
        200
    );
    let line = h.wait_for_log("hearth::access", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["status"], 200, "{line}");
    assert!(
        v["span"]["request_id"].is_number() || v["span"]["request_id"].is_string(),
        "{line}"
    );
    assert_eq!(v["span"]["method"], "GET", "{line}");
    assert!(
        !line.contains("s3cret"),
        "access tokens never reach the log: {line}"
    );
    // Every line so far is JSON.
    for l in &h.log {
        assert!(serde_json::from_str::<serde_json::Value>(l).is_ok(), "{l}");
    }
}

#[test]
fn access_log_can_be_turned_off() {
    let mut h = Hearth::start(Opts::shards(1).env("HEARTH_LOG__ACCESS_LOG", "false"));
    assert_eq!(get(&h, "/health").status, 200);
    assert_eq!(get(&h, "/health").status, 200);
    h.signal(libc::SIGTERM);
    h.wait_for_log("stopped", Duration::from_secs(30));
    assert!(!h.log.iter().any(|l| l.contains("hearth::access")));
}
