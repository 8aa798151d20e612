//! `fed-fanout` (issue 13): one local user's messages in a room joined by
//! `--remotes` simulated remote servers (default 100); how long until every
//! one of them has each message.
//!
//! Setup (not measured): one local user creates a public room; R remote
//! servers ([`RemoteServer`], each its own ed25519 key and TLS listener,
//! `localhost:<port>`) join one user each through `make_join` → sign →
//! `send_join` v2. The target then sends every join to the servers already
//! in the room; setup waits until that traffic has gone quiet.
//!
//! Load: the local user sends a message, then waits until all R servers have
//! received it in a `/send` transaction (each remote notes the first arrival
//! of every message body), then sends the next one: one message in flight,
//! so each sample is the fan-out of one message to an otherwise idle
//! sender. `all` = from the start of the client's `PUT /send` to the last
//! server's arrival; `each` = the same to every server's (R samples per
//! message); `send` = the client's answer (the event is durable then).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hearth::events::RoomVersion;
use serde_json::{json, Value};

use super::fed_common::{fed_client, join_remote_user, runtime_err};
use super::{fixture, Common, MakeTasks, TaskFuture};
use crate::client::{enc, Conn};
use crate::matrix;
use crate::remote_server::RemoteServer;
use crate::report::RunReport;
use crate::stats::Recorder;
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct FedFanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// The target's federation server name (an explicit port: no discovery).
    #[arg(long)]
    pub fed_name: String,
    /// Remote servers in the room, one user each.
    #[arg(long, default_value_t = 100)]
    pub remotes: usize,
    #[arg(long, default_value = "10")]
    pub room_version: String,
    /// How long one message may take to reach every server before it
    /// counts as an error (and the next one is sent).
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Also write the headline figures as a small JSON object here.
    #[arg(long)]
    pub summary: Option<std::path::PathBuf>,
}

struct Setup {
    header: Option<String>,
    token: String,
    room: String,
}

async fn set_up(
    a: &FedFanoutArgs,
    target: &Target,
    run: &str,
    remotes: &[RemoteServer],
    version: RoomVersion,
) -> anyhow::Result<Setup> {
    let mut conn = Conn::new(target.addr, &target.host_header);
    let header = matrix::server_header(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("GET /versions failed: {e}"))?;
    let users = fixture::register_users(target, run, 1, 1).await?;
    let token = users[0].token.clone();
    let body = json!({"preset": "public_chat", "name": format!("fed-fanout {run}"),
                      "room_version": version.as_str()});
    let v = matrix::call(
        &mut conn,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&token),
        Some(&body),
    )
    .await
    .map_err(|e| anyhow::anyhow!("createRoom: {e}"))?;
    let v: Value = serde_json::from_slice(&v)?;
    let room = v["room_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("createRoom: no room_id"))?
        .to_owned();
    let t = Instant::now();
    for (r, remote) in remotes.iter().enumerate() {
        let fed = fed_client(remote.key.clone(), 1)?;
        let user = format!("@hb{run}f{r}:{}", remote.name);
        join_remote_user(&fed, &a.fed_name, remote, &room, &user, version).await?;
    }
    eprintln!(
        "setup: {} remote servers joined in {:.1} s",
        remotes.len(),
        t.elapsed().as_secs_f64()
    );
    // A first message every server must see: then the joins' catch-up
    // traffic is done, and the room's servers are known to the sender.
    let probe = format!("hbfan-{run}-probe");
    matrix::send(&mut conn, &token, &room, &format!("{run}-probe"), &probe)
        .await
        .map_err(|e| anyhow::anyhow!("send: {e}"))?;
    let t = Instant::now();
    loop {
        let missing = remotes
            .iter()
            .filter(|r| arrived(r, &probe).is_none())
            .count();
        if missing == 0 {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            anyhow::bail!(
                "{missing} of {} servers never got the probe message",
                remotes.len()
            );
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "setup: the probe message reached every server in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    monoio::time::sleep(Duration::from_secs(1)).await;
    Ok(Setup {
        header,
        token,
        room,
    })
}

fn arrived(r: &RemoteServer, body: &str) -> Option<Instant> {
    r.received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(body)
        .copied()
}

pub fn run(a: &FedFanoutArgs) -> anyhow::Result<RunReport> {
    let c = &a.common;
    let target = Target::parse(&c.url)?;
    let version = RoomVersion::parse(&a.room_version).map_err(runtime_err)?;
    let run_id = c.run_id();
    let mut rng = fastrand::Rng::new();
    let mut remotes = Vec::new();
    for _ in 0..a.remotes.max(1) {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        remotes.push(RemoteServer::start(&format!("hb{run_id}"), seed)?);
    }
    let remotes = std::sync::Arc::new(remotes);
    eprintln!("fed-fanout: {} remote servers", remotes.len());
    let st = super::setup(c, set_up(a, &target, &run_id, &remotes, version))?;
    let (token, room) = (st.token.clone(), st.room.clone());
    let timeout = Duration::from_secs_f64(a.timeout.max(0.1));
    let (t2, r2) = (target.clone(), remotes.clone());
    let make: MakeTasks = std::sync::Arc::new(move |_t, window, progress| {
        let (target, remotes, token, room, run_id) = (
            t2.clone(),
            r2.clone(),
            token.clone(),
            room.clone(),
            run_id.clone(),
        );
        vec![Box::pin(async move {
            let mut rec = Recorder::new(window, progress);
            let mut conn = Conn::new(target.addr, &target.host_header);
            let mut seq = 0u64;
            while !window.over() {
                seq += 1;
                let body = format!("hbfan-{run_id}-{seq}");
                let t0 = Instant::now();
                match matrix::send(&mut conn, &token, &room, &format!("{run_id}-{seq}"), &body)
                    .await
                {
                    Ok(_) => rec.ok("send", t0.elapsed()),
                    Err(e) => {
                        rec.error("send", &e.key());
                        monoio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                let mut got: Vec<Option<Instant>> = vec![None; remotes.len()];
                loop {
                    for (i, r) in remotes.iter().enumerate() {
                        if got[i].is_none() {
                            got[i] = arrived(r, &body);
                        }
                    }
                    if got.iter().all(Option::is_some) || t0.elapsed() > timeout {
                        break;
                    }
                    monoio::time::sleep(Duration::from_micros(500)).await;
                }
                let mut last = None;
                for g in &got {
                    match g {
                        Some(at) => {
                            rec.ok("each", at.saturating_duration_since(t0));
                            last = last.max(Some(*at));
                        }
                        None => rec.error("each", "not received in time"),
                    }
                }
                match last {
                    Some(at) if got.iter().all(Option::is_some) => {
                        rec.ok("all", at.saturating_duration_since(t0))
                    }
                    _ => rec.error("all", "a server did not get it in time"),
                }
            }
            rec
        }) as TaskFuture]
    });
    let measured = super::drive(c, 1, make)?;
    let q = |name: &str, p: f64| -> f64 {
        measured
            .metrics
            .get(name)
            .filter(|m| m.ok > 0)
            .map_or(f64::NAN, |m| m.hist.value_at_quantile(p) as f64 / 1000.0)
    };
    let figures: BTreeMap<&str, f64> = [
        ("all_p50_ms", q("all", 0.5)),
        ("all_p99_ms", q("all", 0.99)),
        ("each_p50_ms", q("each", 0.5)),
        ("each_p99_ms", q("each", 0.99)),
        ("send_p50_ms", q("send", 0.5)),
    ]
    .into_iter()
    .collect();
    let messages = measured.metrics.get("all").map_or(0, |m| m.ok);
    let failed = measured.metrics.get("all").map_or(0, |m| m.error_count());
    let mut params = c.params(1, 1, 1);
    params.insert("remotes".into(), remotes.len().to_string());
    params.insert("room_version".into(), a.room_version.clone());
    let mut r = super::report(
        "fed-fanout",
        c,
        &target,
        st.header,
        params,
        measured,
        &["all", "each", "send"],
    );
    r.notes.push(format!(
        "{messages} messages reached all {} servers ({failed} did not in {:.0} s); \
         send start → last server p50 {:.1} ms p99 {:.1} ms; → each server p50 {:.1} ms p99 {:.1} ms",
        remotes.len(),
        a.timeout,
        figures["all_p50_ms"],
        figures["all_p99_ms"],
        figures["each_p50_ms"],
        figures["each_p99_ms"],
    ));
    if let Some(path) = &a.summary {
        let mut v = json!({"label": r.label, "server": r.server_header, "messages": messages,
                           "failed": failed, "remotes": remotes.len()});
        for (k, f) in &figures {
            v[*k] = json!(f);
        }
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    // The room id is in the report for a look at the target afterwards.
    r.notes.push(format!("room {}", enc(&st.room)));
    Ok(r)
}
