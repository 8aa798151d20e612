//! Interop with matrix-js-sdk (the SDK inside Element Web), from npm, pinned
//! by `tests/interop/js/package-lock.json`: runs `tests/interop/js/basic.mjs`
//! (unencrypted) and `e2ee.mjs` (its Rust crypto, matrix-sdk-crypto-wasm:
//! encrypted messages both ways, cross-signing, key backup restored on a new
//! device) in Node against the real binary (2 shards) and real PostgreSQL.
//!
//! The test installs its packages by calling `scripts/ensure-node-deps.sh`
//! (idempotent; a no-op when node_modules matches the lock file). A missing
//! node/npm or an install failure fails the test loudly: it never skips.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Hearth, Opts};
use hearth::db::testing::TestCluster;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The scenario directory, with its node_modules installed.
fn interop_js_dir() -> String {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/scripts/ensure-node-deps.sh"))
        .output()
        .expect("run scripts/ensure-node-deps.sh (is bash installed?)");
    assert!(
        out.status.success(),
        "scripts/ensure-node-deps.sh failed ({}): node >= 20, npm and npm registry access are \
         needed for this test.\nstdout:\n{}\nstderr:\n{}",
        out.status,
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

/// Runs a command with a deadline, returning (success, stdout, stderr).
fn run_with_deadline(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let pipe_reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = pipe_reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = pipe_reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for interop script") {
            break Some(st);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(st) => (st.success(), out, err),
        None => (false, out, format!("{err}\n(killed after {limit:?})")),
    }
}

/// Runs `tests/interop/js/{script}` against a fresh hearth (2 shards) and
/// asserts it printed `passed` (its last line on success).
fn run_scenario(script: &str, passed: &str, limit: Duration) {
    let dir = interop_js_dir();
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg(format!("{dir}/{script}"))
        .arg(format!("http://{}", h.addr));
    // The script has its own deadline; this one only catches a hung node.
    let (ok, out, err) = run_with_deadline(cmd, limit);
    println!("--- {script} stdout ---\n{out}--- stderr ---\n{err}");
    assert!(
        ok,
        "matrix-js-sdk interop scenario {script} failed:\n{out}\n{err}"
    );
    assert!(out.contains(passed), "{out}");
}

#[test]
fn matrix_js_sdk_basic_scenario() {
    run_scenario(
        "basic.mjs",
        "all interop steps passed",
        Duration::from_secs(90),
    );
}

/// matrix-js-sdk with its Rust crypto (matrix-sdk-crypto-wasm, as in
/// Element): an encrypted conversation both ways, cross-signing
/// bootstrapped, a key backup made and restored on a new device.
#[test]
fn matrix_js_sdk_rust_crypto_e2ee_scenario() {
    run_scenario(
        "e2ee.mjs",
        "all e2ee steps passed",
        Duration::from_secs(180),
    );
}
