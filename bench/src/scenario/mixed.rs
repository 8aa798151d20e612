//! `mixed`: a blend of sends, receipts and typing notifications from N users
//! in M rooms of skewed sizes (Zipf, from `--seed`), while every user keeps a
//! long-poll `/sync` open on a second connection. Each user acts, then
//! "thinks" for an exponentially distributed time (mean `--think-ms`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{fixture, until_end, Common, MakeTasks, TaskFuture};
use crate::client::Conn;
use crate::matrix;
use crate::report::RunReport;
use crate::stats::Recorder;
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct MixedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Mean think time between a user's actions, ms (0: closed loop).
    #[arg(long, default_value_t = 100)]
    pub think_ms: u64,
    /// Action weights, e.g. send=50,receipt=25,typing=25
    #[arg(long, default_value = "send=50,receipt=25,typing=25", value_parser = parse_mix)]
    pub mix: Mix,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    pub send: u32,
    pub receipt: u32,
    pub typing: u32,
}

pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut m = Mix {
        send: 0,
        receipt: 0,
        typing: 0,
    };
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected name=weight, got {part:?}"))?;
        let v: u32 = v
            .trim()
            .parse()
            .map_err(|_| format!("bad weight in {part:?}"))?;
        match k.trim() {
            "send" => m.send = v,
            "receipt" => m.receipt = v,
            "typing" => m.typing = v,
            other => return Err(format!("unknown action {other:?} (send, receipt, typing)")),
        }
    }
    if m.send + m.receipt + m.typing == 0 {
        return Err("all weights are zero".into());
    }
    Ok(m)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Send,
    Receipt,
    Typing,
}

impl Mix {
    fn pick(&self, rng: &mut fastrand::Rng) -> Action {
        let x = rng.u32(0..self.send + self.receipt + self.typing);
        if x < self.send {
            Action::Send
        } else if x < self.send + self.receipt {
            Action::Receipt
        } else {
            Action::Typing
        }
    }
}

pub fn run(args: &MixedArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let users = c.users.unwrap_or(40).max(1);
    let rooms = c.rooms.unwrap_or(10).max(1);
    let run_id = c.run_id();
    let members = fixture::skewed(users, rooms, c.seed);
    let sizes: Vec<String> = members.iter().map(|m| m.len().to_string()).collect();
    let fx = super::setup(
        c,
        fixture::build(&target, &run_id, users, members, c.setup_concurrency),
    )?;
    let server_header = fx.server_header.clone();
    let fx = Arc::new(fx);
    let threads = c.threads.max(1);
    let (mix, think, seed) = (args.mix, args.think_ms, c.seed);
    let t2 = target.clone();
    let make: MakeTasks = Arc::new(move |t, window, progress| {
        // Last event id seen per room on this thread, for receipts.
        let last: Rc<RefCell<HashMap<usize, String>>> = Rc::default();
        let mut tasks: Vec<TaskFuture> = Vec::new();
        for u in (t..users).step_by(threads) {
            let (fx2, target, progress2) = (fx.clone(), t2.clone(), progress.clone());
            tasks.push(Box::pin(async move {
                let mut rec = Recorder::new(window, progress2);
                let token = fx2.users[u].token.clone();
                let mut conn = Conn::new(target.addr, &target.host_header);
                let Some(mut since) =
                    super::sync::first_token(&mut conn, &token, &mut rec, &window).await
                else {
                    return rec;
                };
                while !window.over() {
                    let t0 = Instant::now();
                    match until_end(
                        &window,
                        matrix::sync(&mut conn, &token, Some(&since), 30_000, None),
                    )
                    .await
                    {
                        None => break,
                        Some(Ok((_, next))) => {
                            rec.ok("sync", t0.elapsed());
                            since = next;
                        }
                        Some(Err(e)) => {
                            rec.error("sync", &e.key());
                            monoio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                rec
            }));
            let (fx, target, progress2, last, run_id) = (
                fx.clone(),
                t2.clone(),
                progress.clone(),
                last.clone(),
                run_id.clone(),
            );
            tasks.push(Box::pin(async move {
                let mut rec = Recorder::new(window, progress2);
                let mut rng =
                    fastrand::Rng::with_seed(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u as u64);
                let user = &fx.users[u];
                let mut conn = Conn::new(target.addr, &target.host_header);
                let my_rooms = &fx.rooms_of[u];
                if my_rooms.is_empty() {
                    return rec;
                }
                let mut seq = 0u64;
                while !window.over() {
                    let r = my_rooms[rng.usize(0..my_rooms.len())];
                    let room = &fx.rooms[r];
                    let mut action = mix.pick(&mut rng);
                    let event = last.borrow().get(&r).cloned();
                    if action == Action::Receipt && event.is_none() {
                        action = Action::Send;
                    }
                    let t0 = Instant::now();
                    let (name, res) = match (action, event) {
                        (Action::Receipt, Some(ev)) => (
                            "receipt",
                            matrix::receipt(&mut conn, &user.token, room, &ev).await,
                        ),
                        (Action::Typing, _) => (
                            "typing",
                            matrix::typing(&mut conn, &user.token, room, &user.user_id, true).await,
                        ),
                        _ => {
                            seq += 1;
                            let txn = format!("{run_id}-m{u}-{seq}");
                            let sent =
                                matrix::send(&mut conn, &user.token, room, &txn, "mixed message")
                                    .await;
                            (
                                "send",
                                sent.map(|ev| {
                                    last.borrow_mut().insert(r, ev);
                                }),
                            )
                        }
                    };
                    match res {
                        Ok(()) => rec.ok(name, t0.elapsed()),
                        Err(e) => rec.error(name, &e.key()),
                    }
                    if think > 0 {
                        let mean = think as f64 / 1000.0;
                        let pause = -(1.0 - rng.f64()).ln() * mean;
                        let left = window.end.saturating_duration_since(Instant::now());
                        monoio::time::sleep(Duration::from_secs_f64(pause.min(10.0)).min(left))
                            .await;
                    }
                }
                rec
            }));
        }
        tasks
    });
    let measured = super::drive(c, threads, make)?;
    let mut params = c.params(users, rooms, users * 2);
    params.insert("think_ms".into(), think.to_string());
    params.insert(
        "mix".into(),
        format!(
            "send={},receipt={},typing={}",
            mix.send, mix.receipt, mix.typing
        ),
    );
    params.insert("room_sizes".into(), sizes.join("/"));
    let mut r = super::report(
        "mixed",
        c,
        &target,
        server_header,
        params,
        measured,
        &["send", "receipt", "typing", "sync"],
    );
    r.notes.push(
        "each user: one long-poll /sync connection (timeout 30 s) and one acting connection".into(),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mix() {
        assert_eq!(
            parse_mix("send=1,typing=3").unwrap(),
            Mix {
                send: 1,
                receipt: 0,
                typing: 3
            }
        );
        assert!(parse_mix("send=0").is_err());
        assert!(parse_mix("dance=4").is_err());
        assert!(parse_mix("send").is_err());
        let m = parse_mix("send=50,receipt=25,typing=25").unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let sends = (0..10_000)
            .filter(|_| m.pick(&mut rng) == Action::Send)
            .count();
        assert!((4_500..5_500).contains(&sends), "{sends}");
    }
}
