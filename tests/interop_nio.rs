//! Interop with a real client library: runs `tests/interop/nio_basic.py`
//! (matrix-nio, from PyPI, pinned by `scripts/ensure-python-deps.sh`)
//! against the real binary (2 shards) and real PostgreSQL.
//!
//! The test prepares its own virtualenv by calling
//! `scripts/ensure-python-deps.sh` (idempotent; a no-op when the venv is
//! already there). A missing python or an install failure fails the test
//! loudly: it never skips.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Hearth, Opts};
use hearth::db::testing::TestCluster;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The venv's python, installing matrix-nio first if needed.
fn interop_python() -> String {
    let out = Command::new("bash")
        .arg(format!("{ROOT}/scripts/ensure-python-deps.sh"))
        .output()
        .expect("run scripts/ensure-python-deps.sh (is bash installed?)");
    assert!(
        out.status.success(),
        "scripts/ensure-python-deps.sh failed ({}): python3 with venv and PyPI access are \
         needed for this test.\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let py = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(
        std::path::Path::new(&py).exists(),
        "ensure-python-deps.sh printed no python path (got {py:?})"
    );
    py
}

/// Runs a command with a deadline, returning (success, stdout, stderr).
fn run_with_deadline(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn interop script");
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

#[test]
fn matrix_nio_basic_scenario() {
    let py = interop_python();
    let db = TestCluster::shared().fresh_database();
    let h = Hearth::start(Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url()));
    let mut cmd = Command::new(&py);
    cmd.arg(format!("{ROOT}/tests/interop/nio_basic.py"))
        .arg(format!("http://{}", h.addr))
        .env("PYTHONUNBUFFERED", "1");
    let (ok, out, err) = run_with_deadline(cmd, Duration::from_secs(120));
    println!("--- nio_basic.py stdout ---\n{out}--- stderr ---\n{err}");
    assert!(ok, "matrix-nio interop scenario failed:\n{out}\n{err}");
    assert!(out.contains("all interop steps passed"), "{out}");
}
