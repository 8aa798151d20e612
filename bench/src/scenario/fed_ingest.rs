//! `fed-ingest` (issue 12): a simulated remote server pushes transactions of
//! pre-signed PDUs into rooms the target hosts, while K local members are
//! parked in `/sync`.
//!
//! Setup (not measured): K+1 local users register; user 0 creates R public
//! rooms (`--room-version`), users 1..=K join them all. One remote server
//! per room ([`RemoteServer`], its own ed25519 key and TLS key endpoint)
//! joins N remote users to its room through `make_join` → sign → `send_join` v2.
//! Then every message PDU is built and signed by the remote (a linear chain
//! per room: prev_events = the previous PDU, depth + 1, auth events = create
//! (before v12), power levels, the sender's join), grouped into transactions
//! of `--txn-pdus`, and each transaction body and its X-Matrix
//! `Authorization` header are signed too, so the load loop only sends bytes.
//!
//! Load: one connection per room and origin (hearth's own federation client,
//! TLS, keep-alive), closed loop, transactions of a room strictly in sequence
//! (each chains on the previous one, so a transaction never references an
//! event the target has not been offered). A PDU counts as accepted when the
//! `/send` answer has `{}` for it. Members' long-poll syncs map every
//! timeline event id back to its transaction: `delivery` = from the start of
//! the `/send` carrying the PDU to a member's sync response containing it
//! (one sample per PDU and member); `applied` = the same for the first
//! member to see it (its rate is the rate at which PDUs become visible).
//!
//! CPU: `/proc` of the server (per thread, grouped by thread name) and its
//! PostgreSQL at the window's edges, divided by the accepted PDUs. The cost
//! of one signature + content-hash check (hearth's `verify_pdu`, on the very
//! PDUs sent) is measured in this process before the run, for the breakdown.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth::events::{build_pdu, NewEvent, RoomVersion, ServerKey};
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::{json, Value};

use super::fed_common::{fed_client, join_remote_user, runtime_err, to_canonical};
use super::{fixture, until_end, Common, MakeTasks, TaskFuture};
use crate::client::{enc, Conn};
use crate::matrix;
use crate::remote_server::RemoteServer;
use crate::report::RunReport;
use crate::stats::{Recorder, Window};
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct FedIngestArgs {
    /// `--url`: the target's client API; `--users`: K local members parked
    /// in /sync (default 8); `--rooms`: R rooms = sending connections (default 4).
    #[command(flatten)]
    pub common: Common,
    /// The target's federation server name (an explicit port: no discovery).
    #[arg(long)]
    pub fed_name: String,
    /// Remote users joined to every room (they take turns sending).
    #[arg(long, default_value_t = 4)]
    pub remote_users: usize,
    /// PDUs per transaction (the spec's maximum is 50).
    #[arg(long, default_value_t = 50)]
    pub txn_pdus: usize,
    /// PDUs built and signed before the run, over all rooms (the run stops
    /// early if a room runs out; that is reported).
    #[arg(long, default_value_t = 30_000)]
    pub pdus: usize,
    #[arg(long, default_value = "10")]
    pub room_version: String,
    /// Timeline limit of the members' syncs.
    #[arg(long, default_value_t = 1000)]
    pub sync_limit: usize,
    /// Offered load in PDUs/s over all rooms, each room's transactions paced
    /// evenly (0: closed loop, the next transaction as soon as the answer is in).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Also write the headline figures as a small JSON object here.
    #[arg(long)]
    pub summary: Option<std::path::PathBuf>,
}

/// One pre-signed transaction.
struct Txn {
    path: String,
    auth: String,
    body: Vec<u8>,
    ids: Vec<String>,
}

/// Where a PDU went: (room, transaction of that room, global index).
type IdMap = HashMap<String, (usize, usize, usize)>;

const BACKOFF: Duration = Duration::from_millis(100);

/// Per room after the joins: the chain's head and the message auth events.
struct RoomHead {
    room: String,
    prev: String,
    depth: u64,
    /// (remote user, its join event id)
    senders: Vec<(String, String)>,
    auth_base: Vec<String>,
}

struct Setup {
    header: Option<String>,
    tokens: Vec<String>,
    rooms: Vec<RoomHead>,
}

async fn set_up(
    a: &FedIngestArgs,
    target: &Target,
    run: &str,
    remotes: &[RemoteServer],
    version: RoomVersion,
) -> anyhow::Result<Setup> {
    let c = &a.common;
    let k = c.users.unwrap_or(8).max(1);
    let r_count = c.rooms.unwrap_or(4).max(1);
    let mut conn = Conn::new(target.addr, &target.host_header);
    let header = matrix::server_header(&mut conn)
        .await
        .map_err(|e| anyhow::anyhow!("GET /versions failed: {e}"))?;
    let users = fixture::register_users(target, run, k + 1, c.setup_concurrency).await?;
    let creator = users[0].token.clone();
    let mut rooms = Vec::new();
    for r in 0..r_count {
        let body = json!({"preset": "public_chat", "name": format!("fed-ingest {run} {r}"),
                          "room_version": version.as_str()});
        let v = matrix::call(
            &mut conn,
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&creator),
            Some(&body),
        )
        .await
        .map_err(|e| anyhow::anyhow!("createRoom: {e}"))?;
        let v: Value = serde_json::from_slice(&v)?;
        let id = v["room_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("createRoom: no room_id"))?;
        rooms.push(id.to_owned());
    }
    let joins: Vec<(String, String)> = rooms
        .iter()
        .flat_map(|room| {
            users[1..]
                .iter()
                .map(|u| (u.token.clone(), room.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    fixture::parallel(
        target,
        joins.len(),
        c.setup_concurrency,
        "joining local members",
        move |mut c, i| {
            let (token, room) = joins[i].clone();
            async move {
                let res = matrix::join(&mut c, &token, &room).await;
                (c, res)
            }
        },
    )
    .await?;

    let dest = a.fed_name.as_str();
    let t = Instant::now();
    let mut heads = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        let remote = &remotes[r];
        let fed = fed_client(remote.key.clone(), 1)?;
        let mut senders = Vec::new();
        let (mut prev, mut depth) = (String::new(), 0);
        for j in 0..a.remote_users.max(1) {
            let user = format!("@hb{run}r{r}x{j}:{}", remote.name);
            let (id, d) = join_remote_user(&fed, dest, remote, room, &user, version).await?;
            depth = d;
            senders.push((user, id.clone()));
            prev = id;
        }
        // Create (before v12) and power levels from the room's state.
        let st = matrix::call(
            &mut conn,
            "GET",
            &format!("/_matrix/client/v3/rooms/{}/state", enc(room)),
            Some(&creator),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("GET state: {e}"))?;
        let st: Value = serde_json::from_slice(&st)?;
        let find = |t: &str| -> Option<String> {
            st.as_array()?
                .iter()
                .find(|e| e["type"] == t && e["state_key"] == "")
                .and_then(|e| e["event_id"].as_str().map(str::to_owned))
        };
        *remote.state_ids.write().unwrap_or_else(|e| e.into_inner()) = st
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mut auth_base = Vec::new();
        if !version.room_id_from_create_event() {
            auth_base.push(find("m.room.create").ok_or_else(|| anyhow::anyhow!("no create"))?);
        }
        auth_base.push(find("m.room.power_levels").ok_or_else(|| anyhow::anyhow!("no PL"))?);
        heads.push(RoomHead {
            room: room.clone(),
            prev,
            depth,
            senders,
            auth_base,
        });
    }
    eprintln!(
        "setup: {} remote joins over federation in {:.1} s",
        heads.len() * a.remote_users.max(1),
        t.elapsed().as_secs_f64()
    );
    Ok(Setup {
        header,
        tokens: users.into_iter().map(|u| u.token).collect(),
        rooms: heads,
    })
}

/// Builds and signs every PDU and transaction. Returns per room its
/// transactions, the id map, and the PDUs (for the verification timing).
fn build_txns(
    a: &FedIngestArgs,
    run: &str,
    remotes: &[RemoteServer],
    version: RoomVersion,
    heads: &[RoomHead],
) -> anyhow::Result<(Vec<Vec<Txn>>, IdMap, Vec<CanonicalJsonObject>)> {
    let t = Instant::now();
    let per_room = a.pdus.div_ceil(heads.len()).max(1);
    let per_txn = a.txn_pdus.clamp(1, 50);
    let mut all = Vec::new();
    let mut ids = IdMap::new();
    let mut sample = Vec::new();
    let mut global = 0;
    for (r, h) in heads.iter().enumerate() {
        let remote = &remotes[r];
        let mut txns = Vec::new();
        let (mut prev, mut depth) = (h.prev.clone(), h.depth);
        let mut i = 0;
        while i < per_room {
            let n = per_txn.min(per_room - i);
            let mut pdus = Vec::with_capacity(n);
            let mut txn_ids = Vec::with_capacity(n);
            for _ in 0..n {
                let (sender, join) = &h.senders[i % h.senders.len()];
                let mut auth = h.auth_base.clone();
                auth.push(join.clone());
                depth += 1;
                let content = json!({"msgtype": "m.text",
                                     "body": format!("fed-ingest {run} room {r} message {i}")});
                let signed = build_pdu(
                    NewEvent {
                        room_version: version,
                        room_id: Some(h.room.as_str().try_into().map_err(runtime_err)?),
                        sender: sender.as_str().try_into().map_err(runtime_err)?,
                        event_type: "m.room.message".into(),
                        state_key: None,
                        content: to_canonical(&content)?,
                        prev_events: vec![prev.as_str().try_into().map_err(runtime_err)?],
                        auth_events: auth
                            .iter()
                            .map(|x| x.as_str().try_into().map_err(runtime_err))
                            .collect::<anyhow::Result<_>>()?,
                        depth,
                        origin_server_ts: hearth::primitives::unix_ms(),
                        redacts: None,
                    },
                    &remote.key,
                )
                .map_err(runtime_err)?;
                prev = signed.event_id.to_string();
                ids.insert(prev.clone(), (r, txns.len(), global));
                global += 1;
                txn_ids.push(prev.clone());
                // Room 0's PDUs only: signed by remotes[0], whose key time_verify has.
                if r == 0 && sample.len() < 300 {
                    sample.push(signed.pdu.clone());
                }
                let v = serde_json::to_value(&signed.pdu)?;
                remote
                    .store
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(prev.clone(), v.clone());
                pdus.push(v);
                i += 1;
            }
            let txn_id = format!("hb{run}r{r}t{}", txns.len());
            let path = format!("/_matrix/federation/v1/send/{txn_id}");
            let body = json!({"origin": remote.name,
                              "origin_server_ts": hearth::primitives::unix_ms(),
                              "pdus": pdus, "edus": []});
            let canon = CanonicalJsonValue::try_from(body.clone()).map_err(runtime_err)?;
            let auth = hearth::federation::x_matrix::sign_request(
                &remote.key,
                &a.fed_name,
                "PUT",
                &path,
                Some(canon),
            )
            .map_err(runtime_err)?;
            txns.push(Txn {
                path,
                auth,
                body: serde_json::to_vec(&body)?,
                ids: txn_ids,
            });
        }
        all.push(txns);
    }
    eprintln!(
        "setup: {global} PDUs built and signed in {} transactions in {:.1} s",
        all.iter().map(Vec::len).sum::<usize>(),
        t.elapsed().as_secs_f64()
    );
    Ok((all, ids, sample))
}

/// µs per `verify_pdu` (signature + content hash), hearth's own check.
fn time_verify(remote: &RemoteServer, version: RoomVersion, sample: &[CanonicalJsonObject]) -> f64 {
    let mut keys = ruma::signatures::PublicKeyMap::new();
    let mut m = BTreeMap::new();
    m.insert(
        remote.key.key_id.to_string(),
        ruma::serde::Base64::new(remote.key.keypair.public_key().to_vec()),
    );
    keys.insert(remote.name.clone(), m);
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..3 {
        for p in sample {
            if hearth::events::verify_pdu(p, version, &keys).is_ok() {
                ok += 1;
            }
        }
    }
    if ok != sample.len() * 3 {
        eprintln!(
            "fed-ingest: warning: {ok} of {} self-checks passed",
            sample.len() * 3
        );
    }
    t.elapsed().as_secs_f64() * 1e6 / (sample.len() * 3).max(1) as f64
}

/// CPU ticks by thread-name group.
type Ticks = BTreeMap<String, u64>;

/// CPU ticks per thread-name group of `pid` (digits and trailing `-` stripped).
fn thread_ticks(pid: u32) -> Ticks {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let comm = s[open + 1..close]
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches(['-', '_', ' '])
            .to_owned();
        let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
        let f = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        if let (Some(u), Some(st)) = (f(14), f(15)) {
            *out.entry(comm).or_insert(0) += u + st;
        }
    }
    out
}

#[derive(Default)]
struct Shared {
    sent_at: Vec<Vec<Option<Instant>>>,
    seen: Vec<bool>,
    parked: usize,
    ran_out: usize,
    delivered: usize,
    limited: usize,
}

pub fn run(a: &FedIngestArgs) -> anyhow::Result<RunReport> {
    let c = &a.common;
    let target = Target::parse(&c.url)?;
    let version = RoomVersion::parse(&a.room_version).map_err(runtime_err)?;
    let run_id = c.run_id();
    // One remote server per room: a server sends one transaction at a time
    // to a destination (Synapse answers a second concurrent one from the
    // same origin with 429), so R concurrent streams are R origins.
    let mut rng = fastrand::Rng::new();
    let mut remotes = Vec::new();
    for _ in 0..c.rooms.unwrap_or(4).max(1) {
        let mut seed = [0u8; 32];
        rng.fill(&mut seed);
        remotes.push(RemoteServer::start(&format!("hb{run_id}"), seed)?);
    }
    eprintln!(
        "fed-ingest: remote servers {} (key ed25519:hb{run_id} each)",
        remotes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let st = super::setup(c, set_up(a, &target, &run_id, &remotes, version))?;
    let (txns, ids, sample) = build_txns(a, &run_id, &remotes, version, &st.rooms)?;
    let verify_us = time_verify(&remotes[0], version, &sample);
    eprintln!("fed-ingest: verify_pdu (signature + content hash) {verify_us:.1} µs here");
    let total_pdus = ids.len();
    let k = st.tokens.len() - 1;
    let rooms = st.rooms.len();
    let txns: Arc<Mutex<Vec<Vec<Txn>>>> = Arc::new(Mutex::new(txns));
    let ids = Arc::new(ids);
    let tokens = Arc::new(st.tokens);
    let keys: Vec<Arc<ServerKey>> = remotes.iter().map(|r| r.key.clone()).collect();
    let fed_name = a.fed_name.clone();
    let filter = format!(
        r#"{{"room":{{"timeline":{{"limit":{}}},"state":{{"lazy_load_members":true}}}}}}"#,
        a.sync_limit
    );
    let cpu: Arc<Mutex<Option<(Ticks, Ticks)>>> = Arc::new(Mutex::new(None));
    let counters = Arc::new(Mutex::new((0usize, 0usize, 0usize, 0usize)));
    let (cpu2, counters2, t2) = (cpu.clone(), counters.clone(), target.clone());
    let server_pid = c.server_pid;
    // Pacing: room r sends its transaction i no earlier than i × interval.
    let interval = (a.rate > 0.0)
        .then(|| Duration::from_secs_f64(a.txn_pdus.clamp(1, 50) as f64 * rooms as f64 / a.rate));
    let make: MakeTasks = Arc::new(move |_t, window, progress| {
        let all: Vec<Vec<Txn>> =
            std::mem::take(&mut *txns.lock().unwrap_or_else(|e| e.into_inner()));
        let shared = Rc::new(RefCell::new(Shared {
            sent_at: all.iter().map(|t| vec![None; t.len()]).collect(),
            seen: vec![false; total_pdus],
            ..Shared::default()
        }));
        let mut tasks: Vec<TaskFuture> = Vec::new();
        for m in 1..=k {
            let (shared, ids, tokens, target, progress, filter) = (
                shared.clone(),
                ids.clone(),
                tokens.clone(),
                t2.clone(),
                progress.clone(),
                filter.clone(),
            );
            tasks.push(Box::pin(async move {
                let mut rec = Recorder::new(window, progress);
                let token = tokens[m].clone();
                let mut conn = Conn::new(target.addr, &target.host_header);
                let Some(mut since) = first_token(&mut conn, &token, &mut rec, &window).await
                else {
                    return rec;
                };
                while !window.over() {
                    shared.borrow_mut().parked += 1;
                    let r = until_end(
                        &window,
                        matrix::sync(&mut conn, &token, Some(&since), 30_000, Some(&filter)),
                    )
                    .await;
                    shared.borrow_mut().parked -= 1;
                    let now = Instant::now();
                    match r {
                        None => break,
                        Some(Ok((body, next))) => {
                            since = next;
                            let Ok(v) = serde_json::from_slice::<Value>(&body) else {
                                rec.error("sync", "bad json");
                                continue;
                            };
                            let Some(joined) = v["rooms"]["join"].as_object() else {
                                continue;
                            };
                            let mut sh = shared.borrow_mut();
                            for room in joined.values() {
                                if room["timeline"]["limited"] == true {
                                    sh.limited += 1;
                                    rec.error("delivery", "timeline limited (gap)");
                                }
                                let Some(evs) = room["timeline"]["events"].as_array() else {
                                    continue;
                                };
                                for ev in evs {
                                    let Some(id) = ev["event_id"].as_str() else {
                                        continue;
                                    };
                                    let Some(&(r, t, g)) = ids.get(id) else {
                                        continue;
                                    };
                                    let Some(sent) = sh.sent_at[r][t] else {
                                        continue;
                                    };
                                    let lat = now.saturating_duration_since(sent);
                                    rec.ok("delivery", lat);
                                    sh.delivered += 1;
                                    if !sh.seen[g] {
                                        sh.seen[g] = true;
                                        rec.ok("applied", lat);
                                    }
                                }
                            }
                        }
                        Some(Err(e)) => {
                            rec.error("sync", &e.key());
                            monoio::time::sleep(BACKOFF).await;
                        }
                    }
                }
                rec
            }));
        }
        for (r, room_txns) in all.into_iter().enumerate() {
            let fed = match fed_client(keys[r].clone(), 1) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("fed-ingest: federation client: {e}");
                    continue;
                }
            };
            let (shared, progress, fed_name) = (shared.clone(), progress.clone(), fed_name.clone());
            tasks.push(Box::pin(async move {
                let mut rec = Recorder::new(window, progress);
                // Members parked first (up to 10 s), so the first deliveries are real.
                let t = Instant::now();
                while shared.borrow().parked < k && t.elapsed() < Duration::from_secs(10) {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                let mut ran_out = true;
                let paced_from = Instant::now();
                'txns: for (ti, txn) in room_txns.iter().enumerate() {
                    if let Some(iv) = interval {
                        let at = paced_from + iv * ti as u32;
                        monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
                    }
                    let mut attempts = 0;
                    loop {
                        if window.over() {
                            ran_out = false;
                            break 'txns;
                        }
                        let t0 = Instant::now();
                        if shared.borrow().sent_at[r][ti].is_none() {
                            shared.borrow_mut().sent_at[r][ti] = Some(t0);
                        }
                        let res = fed
                            .send_raw(
                                &fed_name,
                                "PUT",
                                &txn.path,
                                &[
                                    ("Authorization", txn.auth.as_str()),
                                    ("Content-Type", "application/json"),
                                ],
                                Some(&txn.body),
                                16 << 20,
                            )
                            .await;
                        let lat = t0.elapsed();
                        let err = match res {
                            Ok(resp) if resp.status == 200 => {
                                match serde_json::from_slice::<Value>(&resp.body) {
                                    Ok(v) => {
                                        rec.ok("txn", lat);
                                        for id in &txn.ids {
                                            match v["pdus"].get(id) {
                                                Some(Value::Object(o)) if o.is_empty() => {
                                                    rec.ok("pdu", lat)
                                                }
                                                Some(o) => {
                                                    let e = o["error"].as_str().unwrap_or("?");
                                                    let e: String = e.chars().take(60).collect();
                                                    rec.error("pdu", &format!("rejected: {e}"))
                                                }
                                                None => rec.error("pdu", "missing from answer"),
                                            }
                                        }
                                        None
                                    }
                                    Err(_) => Some("200 with bad json".to_string()),
                                }
                            }
                            Ok(resp) => Some(format!("{}", resp.status)),
                            Err(e) => Some(format!("{e}").chars().take(60).collect()),
                        };
                        match err {
                            None => break,
                            Some(e) => {
                                rec.error("txn", &e);
                                attempts += 1;
                                monoio::time::sleep(BACKOFF).await;
                                // 429 (busy) is retried until the end.
                                if attempts >= 5 && !e.starts_with("429") {
                                    for _ in &txn.ids {
                                        rec.error("pdu", "transaction failed 5 times");
                                    }
                                    break;
                                }
                            }
                        }
                    }
                }
                if ran_out {
                    shared.borrow_mut().ran_out += 1;
                }
                rec
            }));
        }
        // CPU per thread group at the window's edges, and final counters.
        let (cpu, counters, shared, progress) = (
            cpu2.clone(),
            counters2.clone(),
            shared.clone(),
            progress.clone(),
        );
        tasks.push(Box::pin(async move {
            let rec = Recorder::new(window, progress);
            monoio::time::sleep(
                window
                    .measure_from
                    .saturating_duration_since(Instant::now()),
            )
            .await;
            let before = server_pid.map(thread_ticks).unwrap_or_default();
            monoio::time::sleep(window.end.saturating_duration_since(Instant::now())).await;
            let after = server_pid.map(thread_ticks).unwrap_or_default();
            *cpu.lock().unwrap_or_else(|e| e.into_inner()) = Some((before, after));
            // Let the senders and syncs see the end.
            monoio::time::sleep(Duration::from_millis(200)).await;
            let sh = shared.borrow();
            *counters.lock().unwrap_or_else(|e| e.into_inner()) = (
                sh.ran_out,
                sh.delivered,
                sh.limited,
                sh.seen.iter().filter(|s| **s).count(),
            );
            rec
        }));
        tasks
    });
    let measured = super::drive(c, 1, make)?;
    let secs = measured.elapsed.as_secs_f64();
    let accepted = measured.metrics.get("pdu").map_or(0, |m| m.ok);
    let applied = measured.metrics.get("applied").map_or(0, |m| m.ok);
    let q = |name: &str, p: f64| -> f64 {
        measured
            .metrics
            .get(name)
            .filter(|m| m.ok > 0)
            .map_or(f64::NAN, |m| m.hist.value_at_quantile(p) as f64 / 1000.0)
    };
    let (p50, p99) = (q("delivery", 0.5), q("delivery", 0.99));
    let per_pdu = |cpu_s: f64| cpu_s * 1e6 / accepted.max(1) as f64;
    let res = measured.resources.clone();
    let server_us = res.as_ref().map_or(f64::NAN, |r| per_pdu(r.server_cpu_s));
    let pg_us = res
        .as_ref()
        .and_then(|r| r.pg_cpu_s)
        .map_or(f64::NAN, per_pdu);
    let tck = crate::resources::clk_tck();
    let mut threads = BTreeMap::new();
    if let Some((b, af)) = cpu.lock().unwrap_or_else(|e| e.into_inner()).take() {
        for (name, t) in af {
            let d = t.saturating_sub(b.get(&name).copied().unwrap_or(0));
            if d > 0 {
                threads.insert(name, per_pdu(d as f64 / tck));
            }
        }
    }
    let (ran_out, delivered, limited, seen) = *counters.lock().unwrap_or_else(|e| e.into_inner());
    let mut params = c.params(k, rooms, rooms);
    for (key, v) in [
        ("remote_users", a.remote_users.to_string()),
        ("txn_pdus", a.txn_pdus.to_string()),
        ("pdus_built", total_pdus.to_string()),
        ("room_version", a.room_version.clone()),
        ("sync_limit", a.sync_limit.to_string()),
        ("rate", a.rate.to_string()),
    ] {
        params.insert(key.into(), v);
    }
    let mut r = super::report(
        "fed-ingest",
        c,
        &target,
        st.header,
        params,
        measured,
        &["pdu", "applied", "delivery", "txn"],
    );
    let threads_s = threads
        .iter()
        .map(|(n, us)| format!("{n} {us:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    r.notes.push(format!(
        "PDUs accepted {:.0}/s ({accepted} in {secs:.1} s); applied (first seen in a member's sync) {:.0}/s; \
         delivery /send start → member sync p50 {p50:.1} ms p99 {p99:.1} ms",
        accepted as f64 / secs,
        applied as f64 / secs
    ));
    r.notes.push(format!(
        "CPU per accepted PDU: server {server_us:.0} µs [threads: {threads_s}], PostgreSQL {pg_us:.0} µs; \
         verify_pdu (1 signature + content hash) costs {verify_us:.0} µs here (+1 X-Matrix signature per transaction)"
    ));
    r.notes.push(format!(
        "{delivered} deliveries, {seen} distinct PDUs seen by members (whole run), {limited} limited timelines; \
         {ran_out} of {rooms} rooms ran out of pre-built PDUs before the end"
    ));
    if let Some(path) = &a.summary {
        let v = json!({
            "label": r.label, "server": r.server_header,
            "pdus_accepted": accepted, "seconds": secs,
            "pdus_per_s": accepted as f64 / secs, "applied_per_s": applied as f64 / secs,
            "delivery_p50_ms": p50, "delivery_p99_ms": p99,
            "server_cpu_us_per_pdu": server_us, "pg_cpu_us_per_pdu": pg_us,
            "threads_cpu_us_per_pdu": threads, "verify_pdu_us": verify_us,
            "rooms_ran_out": ran_out, "limited_timelines": limited,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&v)?)?;
    }
    Ok(r)
}

/// A first `timeout=0` sync for the member's `next_batch`.
async fn first_token(
    conn: &mut Conn,
    token: &str,
    rec: &mut Recorder,
    window: &Window,
) -> Option<String> {
    const SMALL: &str = r#"{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}"#;
    while !window.over() {
        match until_end(window, matrix::sync(conn, token, None, 0, Some(SMALL))).await? {
            Ok((_, next)) => return Some(next),
            Err(e) => {
                rec.error("sync", &e.key());
                monoio::time::sleep(BACKOFF).await;
            }
        }
    }
    None
}
