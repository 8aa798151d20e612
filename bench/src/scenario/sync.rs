//! The `/sync` scenarios of issue 5:
//! - `sync-idle`: users doing incremental `timeout=0` syncs with nothing new;
//! - `sync-fanout`: K members of one room parked in long-poll syncs, one
//!   sender; time from the send's response to each member's sync response;
//! - `sync-initial`: initial sync of a user in R rooms with E events each.
//!
//! Against a server without `/sync` every failed request is counted by its
//! status (after a short pause, so a 404 does not become a busy loop).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{fixture, until_end, Common, MakeTasks, TaskFuture};
use crate::client::Conn;
use crate::matrix::{self, Account};
use crate::report::RunReport;
use crate::stats::{Recorder, Window};
use crate::url::Target;

/// Initial syncs before the measured ones only need a token: one event per
/// room, and lazy-loaded members (as real clients ask), or in a room of
/// 1,000 members every one of the K first syncs would carry all 1,000 member
/// events (335 kB, ~60 ms of server CPU each on hearth) and the warm-up
/// would be spent on them.
const SMALL_FILTER: &str =
    r#"{"room":{"timeline":{"limit":1},"state":{"lazy_load_members":true}}}"#;
/// `sync-initial --lazy`: members of the timeline's senders only (what
/// Element asks for), the timeline at its default size.
const LAZY_FILTER: &str = r#"{"room":{"state":{"lazy_load_members":true}}}"#;
/// Pause after a failed request.
const BACKOFF: Duration = Duration::from_millis(50);

#[derive(clap::Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
}

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// `--users` is K, the members parked in /sync (plus one sender).
    #[command(flatten)]
    pub common: Common,
    /// Long-poll timeout of the members' syncs, ms.
    #[arg(long, default_value_t = 30_000)]
    pub poll_timeout_ms: u64,
}

#[derive(clap::Args, Clone, Debug)]
pub struct InitialArgs {
    /// `--rooms` is R, the rooms the user is in.
    #[command(flatten)]
    pub common: Common,
    /// Messages sent into each room during setup (E).
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Members of every room (M): the syncing user and M - 1 others, who
    /// send the messages in turn.
    #[arg(long, default_value_t = 1)]
    pub members: usize,
    /// Ask for lazy-loaded members (`lazy_load_members`) instead of every
    /// member event of every room.
    #[arg(long)]
    pub lazy: bool,
}

/// A first sync (small timeline) for a since token, retried until it works
/// or the window ends.
pub(super) async fn first_token(
    conn: &mut Conn,
    token: &str,
    rec: &mut Recorder,
    window: &Window,
) -> Option<String> {
    while !window.over() {
        match until_end(
            window,
            matrix::sync(conn, token, None, 0, Some(SMALL_FILTER)),
        )
        .await?
        {
            Ok((_, next)) => return Some(next),
            Err(e) => {
                rec.error("sync", &e.key());
                monoio::time::sleep(BACKOFF).await;
            }
        }
    }
    None
}

pub fn run_idle(args: &IdleArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let users = c.users.unwrap_or(64).max(1);
    let rooms = c.rooms.unwrap_or(8).clamp(1, users);
    let conns = c.connections.unwrap_or(users).max(1);
    let fx = super::setup(
        c,
        fixture::build(
            &target,
            &c.run_id(),
            users,
            fixture::uniform(users, rooms),
            c.setup_concurrency,
        ),
    )?;
    let server_header = fx.server_header.clone();
    let accounts: Arc<Vec<Account>> = Arc::new(fx.users);
    let threads = c.threads.max(1);
    let t2 = target.clone();
    let make: MakeTasks = Arc::new(move |t, window, progress| {
        (t..conns)
            .step_by(threads)
            .map(|i| {
                let (accounts, target, progress) = (accounts.clone(), t2.clone(), progress.clone());
                Box::pin(async move {
                    let mut rec = Recorder::new(window, progress);
                    let token = &accounts[i % accounts.len()].token;
                    let mut conn = Conn::new(target.addr, &target.host_header);
                    let Some(mut since) = first_token(&mut conn, token, &mut rec, &window).await
                    else {
                        return rec;
                    };
                    while !window.over() {
                        let t0 = Instant::now();
                        match matrix::sync(&mut conn, token, Some(&since), 0, None).await {
                            Ok((_, next)) => {
                                rec.ok("sync", t0.elapsed());
                                since = next;
                            }
                            Err(e) => {
                                rec.error("sync", &e.key());
                                monoio::time::sleep(BACKOFF).await;
                            }
                        }
                    }
                    rec
                }) as TaskFuture
            })
            .collect()
    });
    let measured = super::drive(c, threads, make)?;
    let mut r = super::report(
        "sync-idle",
        c,
        &target,
        server_header,
        c.params(users, rooms, conns),
        measured,
        &["sync"],
    );
    r.notes
        .push("incremental syncs, timeout=0, no filter, nothing new after setup".into());
    Ok(r)
}

/// What the sender and the members of `sync-fanout` share (one thread).
#[derive(Default)]
struct Fan {
    /// Text of the current round's message; empty before the first send.
    marker: String,
    round: u64,
    /// When the send request started.
    sent_at: Option<Instant>,
    /// When the send's response arrived.
    done_at: Option<Instant>,
    /// Deliveries seen before the send's response (latency counted as 0).
    early: usize,
    delivered: usize,
    /// Members with a sync request in flight.
    parked: usize,
}

pub fn run_fanout(args: &FanoutArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let k = c.users.unwrap_or(100).max(1);
    let run_id = c.run_id();
    // User 0 creates the room and sends; users 1..=k are the members.
    let fx = super::setup(
        c,
        fixture::build(
            &target,
            &run_id,
            k + 1,
            vec![(0..=k).collect()],
            c.setup_concurrency,
        ),
    )?;
    let server_header = fx.server_header.clone();
    let fx = Arc::new(fx);
    let poll = args.poll_timeout_ms;
    let t2 = target.clone();
    // One thread: the members and the sender share `Fan` through an Rc.
    let make: MakeTasks = Arc::new(move |_t, window, progress| {
        let fan = Rc::new(RefCell::new(Fan::default()));
        let mut tasks: Vec<TaskFuture> = Vec::new();
        for m in 1..=k {
            let (fx, fan, target, progress) =
                (fx.clone(), fan.clone(), t2.clone(), progress.clone());
            tasks.push(Box::pin(async move {
                let mut rec = Recorder::new(window, progress);
                let token = fx.users[m].token.clone();
                let mut conn = Conn::new(target.addr, &target.host_header);
                // All K first (initial) syncs start at once: the burst the
                // server's admission gate queues (bench/RESULTS.md
                // "sync-burst"); `first-sync` is each one's wait + work.
                let t0 = Instant::now();
                let Some(mut since) = first_token(&mut conn, &token, &mut rec, &window).await
                else {
                    return rec;
                };
                rec.ok("first-sync", t0.elapsed());
                let mut seen_round = 0;
                while !window.over() {
                    fan.borrow_mut().parked += 1;
                    let r = until_end(
                        &window,
                        matrix::sync(&mut conn, &token, Some(&since), poll, None),
                    )
                    .await;
                    fan.borrow_mut().parked -= 1;
                    let now = Instant::now();
                    match r {
                        None => break,
                        Some(Ok((body, next))) => {
                            since = next;
                            let mut f = fan.borrow_mut();
                            if f.round > seen_round
                                && !f.marker.is_empty()
                                && contains(&body, f.marker.as_bytes())
                            {
                                seen_round = f.round;
                                f.delivered += 1;
                                if let Some(s) = f.sent_at {
                                    rec.ok("delivery-from-send", now.saturating_duration_since(s));
                                }
                                match f.done_at {
                                    Some(d) => rec.ok("delivery", now.saturating_duration_since(d)),
                                    None => f.early += 1,
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
        let (fx, target, run_id) = (fx.clone(), t2.clone(), run_id.clone());
        tasks.push(Box::pin(async move {
            let mut rec = Recorder::new(window, progress);
            let sender = &fx.users[0];
            let room = &fx.rooms[0];
            let mut conn = Conn::new(target.addr, &target.host_header);
            while !window.over() {
                // Wait until every member has a sync in flight (up to 2 s
                // between rounds; before the first round up to 60 s, since
                // K first syncs can take seconds and a send racing them
                // measures the setup, not the fan-out), then give the
                // server a moment to park them.
                let t = Instant::now();
                let cap = if fan.borrow().round == 0 {
                    Duration::from_secs(60)
                } else {
                    Duration::from_secs(2)
                };
                while fan.borrow().parked < k && t.elapsed() < cap && !window.over() {
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
                monoio::time::sleep(Duration::from_millis(20)).await;
                let marker = {
                    let mut f = fan.borrow_mut();
                    f.round += 1;
                    f.marker = format!("fanout-{run_id}-{}", f.round);
                    f.done_at = None;
                    f.sent_at = None;
                    f.early = 0;
                    f.delivered = 0;
                    f.marker.clone()
                };
                let t0 = Instant::now();
                fan.borrow_mut().sent_at = Some(t0);
                let txn = format!("{marker}-txn");
                match matrix::send(&mut conn, &sender.token, room, &txn, &marker).await {
                    Ok(_) => {
                        let done = Instant::now();
                        rec.ok("send", done - t0);
                        let early = {
                            let mut f = fan.borrow_mut();
                            f.done_at = Some(done);
                            std::mem::take(&mut f.early)
                        };
                        for _ in 0..early {
                            rec.ok("delivery", Duration::ZERO);
                        }
                    }
                    Err(e) => {
                        rec.error("send", &e.key());
                        monoio::time::sleep(BACKOFF).await;
                        continue;
                    }
                }
                // Wait for every member (or 35 s, or the end).
                let t = Instant::now();
                while fan.borrow().delivered < k
                    && t.elapsed() < Duration::from_secs(35)
                    && !window.over()
                {
                    monoio::time::sleep(Duration::from_millis(2)).await;
                }
                let missed = k.saturating_sub(fan.borrow().delivered);
                if !window.over() {
                    for _ in 0..missed {
                        rec.error("delivery", "not delivered within 35 s");
                    }
                }
            }
            rec
        }));
        tasks
    });
    let measured = super::drive(c, 1, make)?;
    let mut params = c.params(k, 1, k + 1);
    params.insert("threads".into(), "1".into());
    params.insert("poll_timeout_ms".into(), poll.to_string());
    let mut r = super::report(
        "sync-fanout",
        c,
        &target,
        server_header,
        params,
        measured,
        &["delivery", "delivery-from-send", "send", "first-sync"],
    );
    r.notes.push(format!(
        "delivery = time from the send's response to each of {k} members' long-poll sync response carrying the message; one round at a time; a member answered before the send's response counts 0 there. delivery-from-send = from the send request's start (independent of when the sender's response was written)"
    ));
    Ok(r)
}

/// A substring search per delivery: `windows().any()` compared at every
/// offset and was 8 % of the fan-out client's CPU; memmem is SIMD.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && memchr::memmem::find(hay, needle).is_some()
}

pub fn run_initial(args: &InitialArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let rooms = c.rooms.unwrap_or(20).max(1);
    let events = args.events;
    let conns = c.connections.unwrap_or(2).max(1);
    let run_id = c.run_id();
    let workers = c.setup_concurrency;
    let members = args.members.max(1);
    let fx = super::setup(c, async {
        // Every user in every room; user 0 is the one who syncs.
        let all: Vec<usize> = (0..members).collect();
        let fx = fixture::build(&target, &run_id, members, vec![all; rooms], workers).await?;
        let tokens: Vec<String> = fx.users.iter().map(|u| u.token.clone()).collect();
        let room_ids = fx.rooms.clone();
        let rid = run_id.clone();
        fixture::parallel(
            &target,
            rooms * events,
            workers,
            "filling rooms",
            move |mut conn, i| {
                let (token, room) = (
                    tokens[(i / rooms) % members].clone(),
                    room_ids[i % rooms].clone(),
                );
                let txn = format!("{rid}-fill-{i}");
                async move {
                    let r =
                        matrix::send(&mut conn, &token, &room, &txn, &format!("fill message {i}"))
                            .await;
                    (conn, r)
                }
            },
        )
        .await?;
        Ok(fx)
    })?;
    let server_header = fx.server_header.clone();
    let token: Arc<str> = fx.users[0].token.clone().into();
    let counter = Arc::new(AtomicU64::new(0));
    let threads = c.threads.max(1);
    let t2 = target.clone();
    let filter = args.lazy.then_some(LAZY_FILTER);
    let make: MakeTasks = Arc::new(move |t, window, progress| {
        (t..conns)
            .step_by(threads)
            .map(|_| {
                let (token, counter, target, progress) =
                    (token.clone(), counter.clone(), t2.clone(), progress.clone());
                Box::pin(async move {
                    let mut rec = Recorder::new(window, progress);
                    let mut conn = Conn::new(target.addr, &target.host_header);
                    while !window.over() {
                        // A different timeout each time: Synapse caches sync
                        // responses per (user, timeout, since, …) for 2 min.
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let t0 = Instant::now();
                        match matrix::sync(&mut conn, &token, None, n, filter).await {
                            Ok(_) => rec.ok("initial-sync", t0.elapsed()),
                            Err(e) => {
                                rec.error("initial-sync", &e.key());
                                monoio::time::sleep(BACKOFF).await;
                            }
                        }
                    }
                    rec
                }) as TaskFuture
            })
            .collect()
    });
    let measured = super::drive(c, threads, make)?;
    let mut params = c.params(1, rooms, conns);
    params.insert("events_per_room".into(), events.to_string());
    params.insert("members_per_room".into(), members.to_string());
    params.insert("lazy_load_members".into(), args.lazy.to_string());
    let mut r = super::report(
        "sync-initial",
        c,
        &target,
        server_header,
        params,
        measured,
        &["initial-sync"],
    );
    r.notes.push(
        "no since; no filter, or only lazy_load_members with --lazy; timeout=N differs per request so Synapse's 2-minute sync response cache is never hit"
            .into(),
    );
    Ok(r)
}
