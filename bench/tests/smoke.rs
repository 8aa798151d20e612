//! A short smoke run of the rig against a real hearth: `target/debug/hearth`
//! (or `$HEARTH_BIN`) on a fresh database of a throwaway PostgreSQL cluster
//! (`hearth::db::testing::TestCluster`), then `hearth-bench http` and `send`
//! for about 2 s each, then `sync-idle`, `media` and a small `sync-fanout`: nonzero
//! throughput, zero errors, valid JSON.
//!
//! Needs the hearth binary built first (`cargo build --bin hearth`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use hearth::db::testing::TestCluster;
use serde_json::Value;

struct Hearth {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Hearth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hearth_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("HEARTH_BIN") {
        return p.into();
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/hearth");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --bin hearth` first (or set HEARTH_BIN)",
        p.display()
    );
    p
}

fn start_hearth() -> Hearth {
    let db = TestCluster::shared().fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(hearth_bin())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_SHARDS", "2")
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_DATABASE__URL", db.url())
        .env("HEARTH_LISTENERS__0__PORT", "0")
        .env("HEARTH_LISTENERS__0__ADDRESS", "127.0.0.1")
        .env("HEARTH_LOG__ACCESS_LOG", "false")
        .env("HEARTH_RATE_LIMITS__ENABLED", "false")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn hearth");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':'))
                    .collect();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("hearth did not log its address");
    Hearth {
        child,
        url: format!("http://{addr}"),
        _dir: dir,
    }
}

/// Runs hearth-bench with `args` plus a --json file; returns the first run.
fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hearth-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .expect("run hearth-bench");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{args:?} failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    let file: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    file["runs"][0].clone()
}

fn errors(m: &Value) -> u64 {
    m["errors"]
        .as_object()
        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum())
}

#[test]
fn http_send_and_sync_against_hearth() {
    let h = start_hearth();
    let pid = h.child.id().to_string();
    let common = [
        "--url",
        h.url.as_str(),
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ];

    let run = bench(&[&["http", "--connections", "4"][..], &common].concat());
    let m = &run["metrics"][0];
    assert!(m["ok"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(errors(m), 0, "{run}");

    let send = [
        &["send", "--users", "4", "--rooms", "2", "--server-pid", &pid][..],
        &common,
    ]
    .concat();
    let run = bench(&send);
    let m = &run["metrics"][0];
    assert_eq!(m["name"], "send");
    assert!(m["rate"].as_f64().unwrap() > 0.0, "{run}");
    assert_eq!(errors(m), 0, "{run}");
    let res = &run["resources"];
    assert!(res["server_cpu_s"].as_f64().unwrap() > 0.0, "{run}");
    assert!(res["peak_rss_mb"].as_f64().unwrap() > 0.0, "{run}");

    // hearth serves /sync: idle syncs and a small fan-out, no errors.
    let run = bench(&[
        "sync-idle",
        "--url",
        &h.url,
        "--users",
        "2",
        "--rooms",
        "1",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    let m = &run["metrics"][0];
    assert_eq!(m["name"], "sync");
    assert!(m["ok"].as_u64().unwrap() > 0, "{run}");
    assert_eq!(errors(m), 0, "{run}");

    // Media: uploads and authenticated downloads of fresh files.
    let media = [
        &["media", "--users", "2", "--file-bytes", "65536"][..],
        &common,
    ]
    .concat();
    let run = bench(&media);
    for name in ["upload", "download"] {
        let m = run["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name} metric: {run}"));
        assert!(m["ok"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(errors(m), 0, "{run}");
    }

    let run = bench(&[&["sync-fanout", "--users", "3"][..], &common].concat());
    let m = &run["metrics"][0];
    assert_eq!(m["name"], "delivery");
    assert!(m["ok"].as_u64().unwrap() >= 3, "{run}");
    for m in run["metrics"].as_array().unwrap() {
        assert_eq!(errors(m), 0, "{run}");
    }
}
