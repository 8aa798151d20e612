//! `fed-join` (issue 13): a local user of the target joins a big room hosted
//! by a simulated remote server ([`HostedRoom`]: `--members` joined users,
//! `--state-events` state events in all). One join per run, timed in three
//! steps from the client's `POST /join`:
//!
//! - `join`: the join is answered (a partial-state join answers before the
//!   room's full state is known);
//! - `send`: the user's first message after it is answered (the user can
//!   talk);
//! - `full`: `GET /members` lists every member (a server with partial state
//!   answers it only once the state is complete, or lists fewer).
//!
//! The room is built and signed before the clock starts. The remote
//! answers `send_join` with or without members as asked (`omit_members`),
//! and serves `/state_ids`, `/state`, `/event` and `/event_auth` for the
//! joiner's background resync.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hearth::events::RoomVersion;
use serde_json::{json, Value};

use super::fed_common::runtime_err;
use super::{fixture, Common};
use crate::client::{enc, Conn};
use crate::hosted_room::HostedRoom;
use crate::matrix;
use crate::remote_server::RemoteServer;
use crate::report::RunReport;
use crate::stats::{Metric, Progress, Recorder, Window};
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct FedJoinArgs {
    #[command(flatten)]
    pub common: Common,
    /// Joined members of the hosted room.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// State events of the hosted room in all (members included).
    #[arg(long, default_value_t = 20_000)]
    pub state_events: usize,
    #[arg(long, default_value = "10")]
    pub room_version: String,
    /// Longest wait for the full member list.
    #[arg(long, default_value_t = 900.0)]
    pub timeout: f64,
    /// Also write the headline figures as a small JSON object here.
    #[arg(long)]
    pub summary: Option<std::path::PathBuf>,
}

/// Joined members in `GET /members` (the membership filter, as clients use it).
async fn members(conn: &mut Conn, token: &str, room: &str) -> Result<usize, String> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/members?membership=join",
        enc(room)
    );
    let body = matrix::call(conn, "GET", &path, Some(token), None)
        .await
        .map_err(|e| e.key())?;
    let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok(v["chunk"].as_array().map_or(0, Vec::len))
}

async fn joined(conn: &mut Conn, token: &str, room: &str) -> bool {
    matrix::call(
        conn,
        "GET",
        "/_matrix/client/v3/joined_rooms",
        Some(token),
        None,
    )
    .await
    .ok()
    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    .and_then(|v| v["joined_rooms"].as_array().cloned())
    .is_some_and(|a| a.iter().any(|r| r == room))
}

struct Timings {
    header: Option<String>,
    join: Option<Duration>,
    send: Option<Duration>,
    full: Option<Duration>,
    members_seen: usize,
    notes: Vec<String>,
}

async fn measure(
    a: &FedJoinArgs,
    target: &Target,
    run: &str,
    room: &str,
    via: &str,
    expected: usize,
) -> anyhow::Result<Timings> {
    let mut conn = Conn::new(target.addr, &target.host_header);
    let header = matrix::server_header(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("GET /versions failed: {e}"))?;
    let users = fixture::register_users(target, run, 1, 1).await?;
    let token = users[0].token.clone();
    let deadline = Duration::from_secs_f64(a.timeout.max(1.0));
    let mut t = Timings {
        header,
        join: None,
        send: None,
        full: None,
        members_seen: 0,
        notes: Vec::new(),
    };
    let t0 = Instant::now();
    let path = format!(
        "/_matrix/client/v3/join/{}?server_name={}",
        enc(room),
        enc(via)
    );
    match matrix::call(&mut conn, "POST", &path, Some(&token), Some(&json!({}))).await {
        Ok(_) => t.join = Some(t0.elapsed()),
        Err(e) => {
            // A join slower than the client's request timeout goes on in the
            // server: wait for the room in /joined_rooms instead.
            t.notes.push(format!("POST /join: {}", e.key()));
            while t0.elapsed() < deadline {
                if joined(&mut conn, &token, room).await {
                    t.join = Some(t0.elapsed());
                    break;
                }
                monoio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if t.join.is_none() {
        return Ok(t);
    }
    let mut n = 0;
    while t0.elapsed() < deadline {
        n += 1;
        match matrix::send(&mut conn, &token, room, &format!("{run}-j{n}"), "hello").await {
            Ok(_) => {
                t.send = Some(t0.elapsed());
                break;
            }
            Err(e) => {
                t.notes.push(format!("send: {}", e.key()));
                monoio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    while t0.elapsed() < deadline {
        match members(&mut conn, &token, room).await {
            Ok(c) => {
                t.members_seen = c;
                if c >= expected {
                    t.full = Some(t0.elapsed());
                    break;
                }
            }
            Err(e) => t.notes.push(format!("members: {e}")),
        }
        monoio::time::sleep(Duration::from_millis(100)).await;
    }
    t.notes.dedup();
    Ok(t)
}

pub fn run(a: &FedJoinArgs) -> anyhow::Result<RunReport> {
    let c = &a.common;
    let target = Target::parse(&c.url)?;
    let version = RoomVersion::parse(&a.room_version).map_err(runtime_err)?;
    let run_id = c.run_id();
    let mut seed = [0u8; 32];
    fastrand::Rng::new().fill(&mut seed);
    let remote = RemoteServer::start(&format!("hb{run_id}"), seed)?;
    let built = Instant::now();
    let room = HostedRoom::build(&remote, &run_id, a.members, a.state_events, version)?;
    eprintln!(
        "fed-join: {} hosts {} ({} members, {} state events), built and signed in {:.1} s",
        remote.name,
        room.room_id,
        a.members,
        a.state_events.max(a.members + 6),
        built.elapsed().as_secs_f64()
    );
    let (room_id, via) = (room.room_id.clone(), remote.name.clone());
    let room = Arc::new(RwLock::new(room));
    remote.set_routes(HostedRoom::routes(room, &remote));
    // The creator, the members, and the joiner.
    let expected = a.members + 2;
    let t = super::setup(c, measure(a, &target, &run_id, &room_id, &via, expected))?;
    let window = Window {
        start: Instant::now() - Duration::from_secs(1),
        measure_from: Instant::now() - Duration::from_secs(1),
        end: Instant::now() + Duration::from_secs(3600),
    };
    let mut rec = Recorder::new(window, Arc::new(Progress::default()));
    for (name, d) in [("join", t.join), ("send", t.send), ("full", t.full)] {
        match d {
            Some(d) => rec.ok(name, d),
            None => rec.error(name, "did not happen in time"),
        }
    }
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let metrics = rec.metrics.clone();
    let total: Duration = t.full.or(t.send).or(t.join).unwrap_or_default();
    let mut params = c.params(1, 1, 1);
    params.insert("members".into(), a.members.to_string());
    params.insert("state_events".into(), a.state_events.to_string());
    params.insert("room_version".into(), a.room_version.clone());
    let mut r = super::report(
        "fed-join",
        c,
        &target,
        t.header.clone(),
        params,
        super::Measured {
            metrics: metrics
                .into_iter()
                .collect::<std::collections::BTreeMap<String, Metric>>(),
            resources: None,
            elapsed: total.max(Duration::from_millis(1)),
        },
        &["join", "send", "full"],
    );
    r.notes.push(format!(
        "join answered {:.0} ms, first message sent {:.0} ms, full member list ({expected}) {:.0} ms \
         ({} members seen last)",
        ms(t.join),
        ms(t.send),
        ms(t.full),
        t.members_seen
    ));
    r.notes.extend(t.notes.iter().take(10).cloned());
    if let Some(path) = &a.summary {
        let v = json!({"label": r.label, "server": r.server_header, "members": a.members,
                       "state_events": a.state_events, "join_ms": ms(t.join),
                       "send_ms": ms(t.send), "full_ms": ms(t.full),
                       "members_seen": t.members_seen});
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(r)
}
