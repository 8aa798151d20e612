//! End-to-end encryption across federation with matrix-js-sdk and its Rust
//! crypto (matrix-sdk-crypto-wasm, as in Element): a hearth user and a real
//! Synapse user (`common::synapse`, TLS federation on loopback) talk in an
//! encrypted room, once hosted by hearth and once by Synapse, and each
//! message decrypts on the other side. Runs
//! `tests/interop/js/e2ee_federation.mjs HEARTH_URL SYNAPSE_URL`.
//!
//! What it exercises in hearth: remote /keys/query and /keys/claim both
//! ways, m.device_list_update in and out, and room keys sent as to-device
//! messages over federation (m.direct_to_device) both ways.

mod common;

use std::process::Command;
use std::time::Duration;

use common::fed::start_home_with;
use common::node::{interop_js_dir, run_with_deadline};
use common::synapse::{start_synapse, synapse_python};

#[test]
fn hearth_and_synapse_users_talk_encrypted_both_ways() {
    let dir = interop_js_dir();
    let py = synapse_python();
    let syn = start_synapse(&py);
    let home = start_home_with(&[
        ("HEARTH_FEDERATION__RETRY_MIN_MS", "500"),
        ("HEARTH_FEDERATION__RETRY_MAX_MS", "2000"),
    ]);
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .arg(format!("{dir}/e2ee_federation.mjs"))
        .arg(format!("http://{}", home.h.addr))
        .arg(format!("http://{}", syn.client));
    // The script has its own deadline; this one only catches a hung node.
    let (ok, out, err) = run_with_deadline(cmd, Duration::from_secs(300));
    println!("--- e2ee_federation.mjs stdout ---\n{out}--- stderr ---\n{err}");
    assert!(ok, "federated e2ee scenario failed:\n{out}\n{err}");
    assert!(out.contains("all federated e2ee steps passed"), "{out}");
}
