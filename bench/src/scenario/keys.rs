//! `keys-claim`: C claimers (`--connections`, default 64) racing for the
//! one-time keys of T target devices (`--users`, default 64, each with
//! `--keys` uploaded), `POST /keys/claim` for one random target per request
//! (issue "[2/6]": "`/keys/claim` under 64 concurrent claimers").
//!
//! Besides the rate, the scenario checks the property that matters: every
//! one-time key is handed out at most once. A key id seen twice is counted
//! as a `claim` error `duplicate`; a target with no key left answers its
//! fallback key or nothing (`exhausted`, not an error).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::{fixture, Common, MakeTasks, TaskFuture};
use crate::client::Conn;
use crate::matrix::{self, ApiError};
use crate::report::RunReport;
use crate::stats::Recorder;
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct ClaimArgs {
    #[command(flatten)]
    pub common: Common,
    /// One-time keys uploaded per target device before the run.
    #[arg(long, default_value_t = 2000)]
    pub keys: usize,
}

pub const DEFAULT_TARGETS: usize = 64;
pub const DEFAULT_CLAIMERS: usize = 64;
const UPLOAD_CHUNK: usize = 200;
const ALG: &str = "signed_curve25519";

/// `(user_id, device_id, token)` of each target.
type Target3 = (String, String, String);

async fn whoami_device(conn: &mut Conn, token: &str) -> Result<String, ApiError> {
    let b = matrix::call(
        conn,
        "GET",
        "/_matrix/client/v3/account/whoami",
        Some(token),
        None,
    )
    .await?;
    let v: Value = serde_json::from_slice(&b).map_err(|e| ApiError::Body(e.to_string()))?;
    v.get("device_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Body("whoami without device_id".into()))
}

/// Uploads `n` one-time keys (ids `k{i}`) for the device of `token`.
async fn upload(
    conn: &mut Conn,
    user: &str,
    device: &str,
    token: &str,
    n: usize,
) -> Result<(), ApiError> {
    let mut i = 0;
    while i < n {
        let mut keys = Map::new();
        for k in i..(i + UPLOAD_CHUNK).min(n) {
            // Not real curve25519 keys: servers store one-time keys as given
            // (only device keys carry a checked self-signature).
            keys.insert(
                format!("{ALG}:k{k}"),
                json!({"key": format!("bench{k:040}"),
                       "signatures": {user: {format!("ed25519:{device}"): "sig"}}}),
            );
        }
        let body = json!({"one_time_keys": keys});
        matrix::call(
            conn,
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(token),
            Some(&body),
        )
        .await?;
        i += UPLOAD_CHUNK;
    }
    Ok(())
}

pub fn run(args: &ClaimArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let n_targets = c.users.unwrap_or(DEFAULT_TARGETS).max(1);
    let conns = c.connections.unwrap_or(DEFAULT_CLAIMERS).max(1);
    let run_id = c.run_id();
    let n_keys = args.keys;
    let t2 = target.clone();
    let workers = c.setup_concurrency;
    let (fx, targets) = super::setup(c, async move {
        // Targets and claimers are the same accounts: claimers need a token.
        let fx = fixture::build(&t2, &run_id, n_targets, vec![], workers).await?;
        let tokens: Vec<(String, String)> = fx
            .users
            .iter()
            .map(|u| (u.user_id.clone(), u.token.clone()))
            .collect();
        let targets: Vec<Target3> = fixture::parallel(
            &t2,
            n_targets,
            workers,
            "uploading one-time keys",
            move |mut conn, i| {
                let (user, token) = tokens[i].clone();
                async move {
                    let r = async {
                        let device = whoami_device(&mut conn, &token).await?;
                        upload(&mut conn, &user, &device, &token, n_keys).await?;
                        Ok((user, device, token))
                    }
                    .await;
                    (conn, r)
                }
            },
        )
        .await?;
        Ok((fx, targets))
    })?;
    let server_header = fx.server_header.clone();
    let targets = Arc::new(targets);
    let seen: Arc<Mutex<HashSet<(usize, String)>>> = Arc::default();
    let threads = c.threads.max(1);
    let seed = c.seed;
    let (seen2, targets2, target2) = (seen.clone(), targets.clone(), target.clone());
    let make: MakeTasks = Arc::new(move |t, window, progress| {
        (t..conns)
            .step_by(threads)
            .map(|i| {
                let (targets, target, seen) = (targets2.clone(), target2.clone(), seen2.clone());
                let progress = progress.clone();
                Box::pin(async move {
                    let mut rec = Recorder::new(window, progress);
                    let mut rng = fastrand::Rng::with_seed(seed ^ (i as u64).wrapping_mul(0x9e37));
                    let mut conn = Conn::new(target.addr, &target.host_header);
                    let me = &targets[i % targets.len()].2;
                    while !window.over() {
                        let ti = rng.usize(0..targets.len());
                        let (user, device, _) = &targets[ti];
                        let body = json!({"one_time_keys": {user: {device: ALG}}});
                        let t0 = Instant::now();
                        let r = matrix::call(
                            &mut conn,
                            "POST",
                            "/_matrix/client/v3/keys/claim",
                            Some(me),
                            Some(&body),
                        )
                        .await;
                        let elapsed = t0.elapsed();
                        match r {
                            Ok(b) => {
                                let v: Value = serde_json::from_slice(&b).unwrap_or_default();
                                let got = v["one_time_keys"][user][device]
                                    .as_object()
                                    .and_then(|m| m.keys().next().cloned());
                                match got {
                                    // Ids `k{n}` are one-time keys; anything
                                    // else is the fallback (may repeat).
                                    Some(id) if id.starts_with(&format!("{ALG}:k")) => {
                                        let fresh = seen
                                            .lock()
                                            .map(|mut s| s.insert((ti, id)))
                                            .unwrap_or(true);
                                        if fresh {
                                            rec.ok("claim", elapsed);
                                        } else {
                                            rec.error("claim", "duplicate");
                                        }
                                    }
                                    _ => rec.ok("exhausted", elapsed),
                                }
                            }
                            Err(e) => rec.error("claim", &e.key()),
                        }
                    }
                    rec
                }) as TaskFuture
            })
            .collect()
    });
    let measured = super::drive(c, threads, make)?;
    let mut params = c.params(n_targets, 0, conns);
    params.insert("keys_per_target".into(), n_keys.to_string());
    params.insert(
        "distinct_keys_claimed".into(),
        seen.lock().map(|s| s.len()).unwrap_or(0).to_string(),
    );
    Ok(super::report(
        "keys-claim",
        c,
        &target,
        server_header,
        params,
        measured,
        &["claim", "exhausted"],
    ))
}
