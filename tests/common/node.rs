//! Running the matrix-js-sdk scenarios of tests/interop/js/ in Node: their
//! packages (installed by `scripts/ensure-node-deps.sh`, pinned by the lock
//! file) and a deadline on the node process.
#![allow(dead_code)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The scenario directory, with its node_modules installed. A missing
/// node/npm or a failed install fails the test: it never skips.
pub fn interop_js_dir() -> String {
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
pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = reader(
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
