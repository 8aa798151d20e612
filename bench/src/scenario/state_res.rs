//! `state-res`: state resolution of two forks of a big room's state
//! (issue "[1/6]": "state resolution of two forks of a 10,000-member room's
//! state (time, and that the shards stayed responsive meanwhile)").
//!
//! hearth only: the forks are made by a fake remote server (`remote.test`,
//! its own ed25519 key) whose signed PDUs enter through the test door
//! `POST /_hearth/test/pdu`, so the server must run with
//! `HEARTHTEST_INJECT_PDUS=1`. Steps:
//! 1. A local user creates a public v12 room; `--members` remote users
//!    join in one chain; the local user gives the first of them power 100.
//! 2. From the last join, branch A: that user kicks `--fork-events`
//!    members in a chain; then branch B from the same join kicks as many
//!    others. Each B event leaves two forward extremities whose states
//!    (each ~`--members` entries) are resolved into the current state.
//! 3. One event with both tips as `prev_events` closes the fork (its state
//!    before is one more resolution).
//!
//! Meanwhile `--connections` connections loop `GET /versions`; their p99
//! during the fork phase, against a baseline taken just before it, shows
//! whether the shards stayed responsive. The final `/joined_members`
//! count checks the resolution kept both branches' kicks.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hearth::events::{build_pdu, NewEvent, RoomVersion, ServerKey};
use serde_json::{json, Value};

use crate::client::{enc, Conn};
use crate::matrix::{self, ApiError};
use crate::stats::new_hist;
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct StateResArgs {
    /// Base URL of hearth (started with HEARTHTEST_INJECT_PDUS=1).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    pub url: String,
    /// Remote members joined before the fork.
    #[arg(long, default_value_t = 10_000)]
    pub members: usize,
    /// Kicks on each branch of the fork.
    #[arg(long, default_value_t = 20)]
    pub fork_events: usize,
    /// Connections looping `GET /versions` during the run.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Seconds of `/versions` baseline before the fork.
    #[arg(long, default_value_t = 5.0)]
    pub baseline: f64,
}

const DOOR: &str = "/_hearth/test/pdu";
const REMOTE: &str = "remote.test";

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// The fake remote server and what it knows of the room.
struct Forger {
    key: ServerKey,
    room: String,
    pl: String,
    jr: String,
    members: std::collections::HashMap<String, String>,
    depth: u64,
    ts: u64,
}

impl Forger {
    fn pdu(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
        prev: &[&str],
    ) -> anyhow::Result<(String, Value)> {
        let mut auth = vec![self.pl.clone()];
        auth.extend(self.members.get(sender).cloned());
        if let Some(target) = state_key.filter(|_| kind == "m.room.member") {
            auth.extend(self.members.get(target).cloned());
            if content["membership"] == "join" {
                auth.push(self.jr.clone());
            }
        }
        auth.sort();
        auth.dedup();
        let Value::Object(c) = content else {
            anyhow::bail!("content is not an object")
        };
        self.depth += 1;
        self.ts += 1;
        let signed = build_pdu(
            NewEvent {
                room_version: RoomVersion::V12,
                room_id: Some(self.room.as_str().try_into().map_err(err)?),
                sender: sender.try_into().map_err(err)?,
                event_type: kind.into(),
                state_key: state_key.map(Into::into),
                content: ruma::canonical_json::try_from_json_map(c).map_err(err)?,
                prev_events: prev
                    .iter()
                    .map(|p| (*p).try_into())
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
                auth_events: auth
                    .iter()
                    .map(|a| a.as_str().try_into())
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
                depth: self.depth,
                origin_server_ts: self.ts,
                redacts: None,
            },
            &self.key,
        )
        .map_err(err)?;
        Ok((
            signed.event_id.to_string(),
            serde_json::to_value(&signed.pdu)?,
        ))
    }

    /// Injects `pdu`; fails unless it was accepted.
    async fn inject(&self, conn: &mut Conn, token: &str, pdu: &Value) -> anyhow::Result<()> {
        let body = json!({
            "key": {"server": REMOTE, "key_id": self.key.key_id.to_string(),
                    "public_key": self.key.public_key_base64()},
            "room_id": self.room, "pdu": pdu,
        });
        let r = matrix::call(conn, "POST", DOOR, Some(token), Some(&body))
            .await
            .map_err(api)?;
        let v: Value = serde_json::from_slice(&r)?;
        if v["outcome"] != "accepted" {
            anyhow::bail!("injected PDU not accepted: {v}");
        }
        Ok(())
    }
}

fn api(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{e:?}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Loops `/versions` on `n` connections until `stop`, recording into the
/// histogram `phase` selects (0 = setup, ignored; 1 = baseline; 2 = fork).
fn spawn_versions(
    t: &Target,
    n: usize,
    phase: Rc<Cell<u8>>,
    hists: Rc<[std::cell::RefCell<Histogram<u64>>; 2]>,
) {
    for _ in 0..n {
        let (phase, hists) = (phase.clone(), hists.clone());
        let mut conn = Conn::new(t.addr, &t.host_header);
        monoio::spawn(async move {
            while phase.get() != 3 {
                let p = phase.get();
                let t0 = Instant::now();
                let r = conn
                    .request("GET", "/_matrix/client/versions", None, None)
                    .await;
                let us = t0.elapsed().as_micros() as u64;
                if r.is_ok() && (p == 1 || p == 2) {
                    let _ = hists[(p - 1) as usize].borrow_mut().record(us.max(1));
                }
                if p == 0 {
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
    }
}

pub fn run(a: &StateResArgs) -> anyhow::Result<()> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| anyhow::anyhow!("monoio runtime: {e}"))?;
    rt.block_on(run_inner(a.clone()))
}

async fn run_inner(a: StateResArgs) -> anyhow::Result<()> {
    let t = Target::parse(&a.url)?;
    let mut conn = Conn::new(t.addr, &t.host_header);
    let run = format!("sr{}", std::process::id());
    let alice = matrix::register(&mut conn, &format!("{run}a"), "bench-password")
        .await
        .map_err(api)?;
    let body = json!({"preset": "public_chat", "room_version": "12"});
    let r = matrix::call(
        &mut conn,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&alice.token),
        Some(&body),
    )
    .await
    .map_err(api)?;
    let room = serde_json::from_slice::<Value>(&r)?["room_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no room_id"))?
        .to_owned();
    let state: Value = serde_json::from_slice(
        &matrix::call(
            &mut conn,
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            Some(&alice.token),
            None,
        )
        .await
        .map_err(api)?,
    )?;
    let find = |ty: &str| -> anyhow::Result<String> {
        state
            .as_array()
            .and_then(|s| s.iter().find(|e| e["type"] == ty))
            .and_then(|e| e["event_id"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no {ty} in the room's state"))
    };
    let name = ruma::OwnedServerName::try_from(REMOTE).map_err(err)?;
    let mut f = Forger {
        key: ServerKey::from_seed(name, "1", &[7; 32]).map_err(err)?,
        room: room.clone(),
        pl: find("m.room.power_levels")?,
        jr: find("m.room.join_rules")?,
        members: Default::default(),
        depth: 100,
        ts: hearth::primitives::unix_ms(),
    };
    f.members
        .insert(alice.user_id.clone(), find("m.room.member")?);
    let latest = |c: Value| -> anyhow::Result<String> {
        c["chunk"][0]["event_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no latest event"))
    };
    let msgs = format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
        enc(&room)
    );
    let m = matrix::call(&mut conn, "GET", &msgs, Some(&alice.token), None)
        .await
        .map_err(api)?;
    let mut tip = latest(serde_json::from_slice(&m)?)?;

    let phase = Rc::new(Cell::new(0u8));
    let hists = Rc::new([
        std::cell::RefCell::new(new_hist()),
        std::cell::RefCell::new(new_hist()),
    ]);
    spawn_versions(&t, a.connections, phase.clone(), hists.clone());

    // 1. The joins, one chain; the first joiner gets power 100.
    let user = |i: usize| format!("@r{i}:{REMOTE}");
    let t0 = Instant::now();
    for i in 0..a.members {
        let u = user(i);
        let (id, pdu) = f.pdu(
            &u,
            "m.room.member",
            Some(&u),
            json!({"membership": "join"}),
            &[&tip],
        )?;
        f.inject(&mut conn, &alice.token, &pdu).await?;
        f.members.insert(u, id.clone());
        tip = id;
        if i == 0 {
            let pl = json!({"users": {user(0): 100}});
            let r = matrix::call(
                &mut conn,
                "PUT",
                &format!(
                    "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
                    enc(&room)
                ),
                Some(&alice.token),
                Some(&pl),
            )
            .await
            .map_err(api)?;
            let id = serde_json::from_slice::<Value>(&r)?["event_id"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("no event_id"))?
                .to_owned();
            f.pl = id.clone();
            tip = id;
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("joined {} in {:.1} s", i + 1, t0.elapsed().as_secs_f64());
        }
    }
    let joins_s = t0.elapsed().as_secs_f64();

    // Baseline /versions latency with the room at rest.
    phase.set(1);
    monoio::time::sleep(Duration::from_secs_f64(a.baseline)).await;

    // 2. The fork: branch A, then branch B from the same base.
    phase.set(2);
    let base = tip.clone();
    let admin = user(0);
    let kick = json!({"membership": "leave"});
    let mut a_tip = base.clone();
    let mut lat_a = Vec::new();
    for i in 0..a.fork_events {
        let target = user(1 + i);
        let (id, pdu) = f.pdu(
            &admin,
            "m.room.member",
            Some(&target),
            kick.clone(),
            &[&a_tip],
        )?;
        let t1 = Instant::now();
        f.inject(&mut conn, &alice.token, &pdu).await?;
        lat_a.push(t1.elapsed());
        a_tip = id;
    }
    let mut b_tip = base.clone();
    let mut lat_b = Vec::new();
    for i in 0..a.fork_events {
        let target = user(1 + a.fork_events + i);
        let (id, pdu) = f.pdu(
            &admin,
            "m.room.member",
            Some(&target),
            kick.clone(),
            &[&b_tip],
        )?;
        let t1 = Instant::now();
        f.inject(&mut conn, &alice.token, &pdu).await?;
        lat_b.push(t1.elapsed());
        b_tip = id;
    }
    // 3. Close the fork.
    let (_, merge) = f.pdu(
        &admin,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "merge"}),
        &[&a_tip, &b_tip],
    )?;
    let t1 = Instant::now();
    f.inject(&mut conn, &alice.token, &merge).await?;
    let merge_ms = ms(t1.elapsed());
    phase.set(3);

    let jm = matrix::call(
        &mut conn,
        "GET",
        &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
        Some(&alice.token),
        None,
    )
    .await
    .map_err(api)?;
    let joined = serde_json::from_slice::<Value>(&jm)?["joined"]
        .as_object()
        .map_or(0, |o| o.len());
    let expected = a.members + 1 - 2 * a.fork_events;

    let stats = |v: &[Duration]| {
        let mut s: Vec<f64> = v.iter().map(|d| ms(*d)).collect();
        s.sort_by(|x, y| x.total_cmp(y));
        let p = |q: f64| {
            s.get(((s.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        (p(0.5), p(1.0))
    };
    let (a50, amax) = stats(&lat_a);
    let (b50, bmax) = stats(&lat_b);
    let base_h = hists[0].borrow();
    let fork_h = hists[1].borrow();
    println!(
        "state-res: {} members joined in {joins_s:.1} s; fork of {} + {} kicks",
        a.members, a.fork_events, a.fork_events
    );
    println!("  branch A event (one extremity, no resolution): p50 {a50:.1} ms, max {amax:.1} ms");
    println!("  branch B event (two extremities resolved):     p50 {b50:.1} ms, max {bmax:.1} ms");
    println!("  merge event (state before = resolution):       {merge_ms:.1} ms");
    println!(
        "  /versions at rest:   {} req, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        base_h.len(),
        pct(&base_h, 0.5),
        pct(&base_h, 0.99),
        base_h.max() as f64 / 1000.0
    );
    println!(
        "  /versions in fork:   {} req, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        fork_h.len(),
        pct(&fork_h, 0.5),
        pct(&fork_h, 0.99),
        fork_h.max() as f64 / 1000.0
    );
    println!("  joined members after: {joined} (expected {expected})");
    if joined != expected {
        anyhow::bail!("resolution lost a branch: {joined} joined, expected {expected}");
    }
    Ok(())
}
