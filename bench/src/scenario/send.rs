//! `send`: N users in M rooms sending messages concurrently, each a
//! `PUT /rooms/{room}/send/m.room.message/{txn}` with a fresh txn id
//! (issue 4). Headline: events persisted per second (a 200 carries the
//! event id, which hearth returns only after COMMIT) and their latency.

use std::sync::Arc;
use std::time::Instant;

use super::{fixture, Common, MakeTasks, TaskFuture};
use crate::client::Conn;
use crate::matrix;
use crate::report::RunReport;
use crate::stats::Recorder;
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub common: Common,
    /// Bytes of text in each message body.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
}

pub const DEFAULT_USERS: usize = 32;
pub const DEFAULT_ROOMS: usize = 8;

pub fn run(args: &SendArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let users = c.users.unwrap_or(DEFAULT_USERS).max(1);
    let rooms = c.rooms.unwrap_or(DEFAULT_ROOMS).clamp(1, users);
    let conns = c.connections.unwrap_or(users).max(1);
    let run_id = c.run_id();
    let fx = super::setup(
        c,
        fixture::build(
            &target,
            &run_id,
            users,
            fixture::uniform(users, rooms),
            c.setup_concurrency,
        ),
    )?;
    let server_header = fx.server_header.clone();
    let fx = Arc::new(fx);
    let text: Arc<str> = "x".repeat(args.body_bytes).into();
    let threads = c.threads.max(1);
    let make: MakeTasks = Arc::new(move |t, window, progress| {
        (t..conns)
            .step_by(threads)
            .map(|i| {
                let (fx, text, target, run_id) =
                    (fx.clone(), text.clone(), target.clone(), run_id.clone());
                let progress = progress.clone();
                Box::pin(async move {
                    let mut rec = Recorder::new(window, progress);
                    let u = i % fx.users.len();
                    let user = &fx.users[u];
                    let Some(room) = fx.rooms_of[u].first().map(|&r| &fx.rooms[r]) else {
                        return rec;
                    };
                    let mut conn = Conn::new(target.addr, &target.host_header);
                    let mut seq = 0u64;
                    while !window.over() {
                        seq += 1;
                        let txn = format!("{run_id}-{i}-{seq}");
                        let t0 = Instant::now();
                        match matrix::send(&mut conn, &user.token, room, &txn, &text).await {
                            Ok(_) => rec.ok("send", t0.elapsed()),
                            Err(e) => rec.error("send", &e.key()),
                        }
                    }
                    rec
                }) as TaskFuture
            })
            .collect()
    });
    let measured = super::drive(c, threads, make)?;
    let mut params = c.params(users, rooms, conns);
    params.insert("body_bytes".into(), args.body_bytes.to_string());
    Ok(super::report(
        "send",
        c,
        &Target::parse(&c.url)?,
        server_header,
        params,
        measured,
        &["send"],
    ))
}
