//! `hearth-bench`: load generator and benchmark rig for hearth and any other
//! Matrix homeserver. Scenarios are subcommands; figures go to bench/RESULTS.md.

mod client;
mod compare;
mod db;
mod db_report;
mod hosted_room;
mod http_load;
mod matrix;
mod plot;
mod raw_responder;
mod remote_server;
mod report;
mod resources;
mod run_result;
mod scenario;
mod stats;
mod url;

use std::sync::Arc;

use clap::{Parser, Subcommand};

use report::{ResultsFile, RunReport};
use scenario::Common;

#[derive(Parser, Debug)]
#[command(name = "hearth-bench", version, about = "Benchmark Matrix homeservers")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Keep-alive load on one GET endpoint (`--url` with a path; default
    /// path `/_matrix/client/versions`). `--connections` default 64.
    Http(Common),
    /// N users in M rooms sending messages (PUT /send with fresh txn ids).
    /// Defaults: 32 users, 8 rooms, one connection per user.
    Send(scenario::send::SendArgs),
    /// Incremental `timeout=0` syncs with nothing new. Defaults: 64 users, 8 rooms.
    SyncIdle(scenario::sync::IdleArgs),
    /// K members (`--users`, default 100) of one room parked in long-poll
    /// syncs, one sender: send response → member sync response latency.
    SyncFanout(scenario::sync::FanoutArgs),
    /// Initial sync of one user in R rooms (`--rooms`, default 20) with E
    /// events each (`--events`, default 20); 2 connections.
    SyncInitial(scenario::sync::InitialArgs),
    /// Sends, receipts, typing and long-poll syncs from N users (default 40)
    /// in M rooms (default 10) of skewed sizes.
    Mixed(scenario::mixed::MixedArgs),
    /// C claimers (`--connections`, default 64) racing for the one-time keys
    /// of T devices (`--users`, default 64, `--keys` each): `POST /keys/claim`;
    /// a key handed out twice is an error.
    KeysClaim(scenario::keys::ClaimArgs),
    /// Media upload then authenticated download of a fresh file (`--file-bytes`,
    /// default 1 MiB) by N users (default 8), one connection each.
    Media(scenario::media::MediaArgs),
    /// hearth only (HEARTHTEST_INJECT_PDUS=1): state resolution of two forks
    /// of a `--members` (default 10,000) room's state, with `/versions`
    /// latency meanwhile.
    StateRes(scenario::state_res::StateResArgs),
    /// A simulated remote server (own key, TLS key endpoint) joins users to
    /// R rooms of the target over federation, then pushes pre-signed PDUs
    /// in transactions while K local members are parked in /sync:
    /// accepted PDUs/s, /send → /sync latency, CPU per PDU.
    FedIngest(scenario::fed_ingest::FedIngestArgs),
    /// R simulated remote servers (default 100) join a room of the target;
    /// a local user's messages, one at a time: the time until every server
    /// has each one.
    FedFanout(scenario::fed_fanout::FedFanoutArgs),
    /// A local user joins a big room (`--members`, `--state-events`) hosted
    /// by a simulated remote server: time until the join is answered, until
    /// the user can send, until the full member list.
    FedJoin(scenario::fed_join::FedJoinArgs),
    /// Every scenario against hearth and a peer (Synapse), alternating, with
    /// a ratio table.
    Compare(compare::CompareArgs),
    /// Latency-percentile and throughput charts (SVG) from a --json file.
    Plot(plot::PlotArgs),
    /// hearth's PostgreSQL client on an event table: single inserts,
    /// pipelined inserts, group commit, point selects.
    Db(db::DbArgs),
    /// A minimal HTTP responder on raw monoio, the runtime's own ceiling, to
    /// compare hearth's HTTP layer against.
    RawResponder {
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: String,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

/// Runs one scenario subcommand; `None` for the others.
pub fn run_scenario(cmd: &Cmd) -> Option<anyhow::Result<RunReport>> {
    Some(match cmd {
        Cmd::Http(c) => run_http(c),
        Cmd::Send(a) => scenario::send::run(a),
        Cmd::SyncIdle(a) => scenario::sync::run_idle(a),
        Cmd::SyncFanout(a) => scenario::sync::run_fanout(a),
        Cmd::SyncInitial(a) => scenario::sync::run_initial(a),
        Cmd::Mixed(a) => scenario::mixed::run(a),
        Cmd::KeysClaim(a) => scenario::keys::run(a),
        Cmd::Media(a) => scenario::media::run(a),
        Cmd::FedIngest(a) => scenario::fed_ingest::run(a),
        Cmd::FedFanout(a) => scenario::fed_fanout::run(a),
        Cmd::FedJoin(a) => scenario::fed_join::run(a),
        _ => return None,
    })
}

fn common_of(cmd: &Cmd) -> Option<&Common> {
    match cmd {
        Cmd::Http(c) => Some(c),
        Cmd::Send(a) => Some(&a.common),
        Cmd::SyncIdle(a) => Some(&a.common),
        Cmd::SyncFanout(a) => Some(&a.common),
        Cmd::SyncInitial(a) => Some(&a.common),
        Cmd::Mixed(a) => Some(&a.common),
        Cmd::KeysClaim(a) => Some(&a.common),
        Cmd::Media(a) => Some(&a.common),
        Cmd::FedIngest(a) => Some(&a.common),
        Cmd::FedFanout(a) => Some(&a.common),
        Cmd::FedJoin(a) => Some(&a.common),
        _ => None,
    }
}

fn run_http(c: &Common) -> anyhow::Result<RunReport> {
    let mut target = url::Target::parse(&c.url)?;
    if target.path == "/" {
        target.path = "/_matrix/client/versions".into();
    }
    let connections = c.connections.unwrap_or(64);
    let window = c.window();
    let progress = Arc::new(stats::Progress::default());
    let t2 = target.clone();
    let (threads, p2) = (c.threads, progress.clone());
    let load = std::thread::spawn(move || {
        http_load::run(
            &t2,
            http_load::Load {
                connections,
                threads,
                warmup: window.measure_from - window.start,
                duration: window.end - window.measure_from,
            },
            p2,
        )
    });
    // The load threads keep their own clock; the driver here only reports.
    let measured = scenario::monitor_only(c, window, &progress);
    let metric = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    let requests = metric.ok + metric.error_count();
    let (watch, before, after, peak) = measured;
    let resources = watch.resources(&before, &after, requests, peak);
    let mut params = c.params(0, 0, connections);
    params.retain(|k, _| k != "users" && k != "rooms");
    let measured = scenario::Measured {
        metrics: [("request".to_string(), metric)].into(),
        resources,
        elapsed: window.end - window.measure_from,
    };
    let mut r = scenario::report("http", c, &target, None, params, measured, &["request"]);
    r.notes.push(format!("GET {}", target.path));
    Ok(r)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(result) = run_scenario(&cli.command) {
        let report = result?;
        println!("{}", report.table());
        if let Some(path) = common_of(&cli.command).and_then(|c| c.json.as_ref()) {
            ResultsFile::new(vec![report]).write(path)?;
        }
        return Ok(());
    }
    match cli.command {
        Cmd::Compare(args) => compare::run(&args),
        Cmd::Plot(args) => plot::run(&args),
        Cmd::Db(args) => {
            let report = db::run(&args)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Cmd::RawResponder { listen, threads } => raw_responder::run(&listen, threads),
        Cmd::StateRes(args) => scenario::state_res::run(&args),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn parses_common_flags() {
        let cli = Cli::try_parse_from([
            "hearth-bench",
            "send",
            "--url",
            "http://127.0.0.1:9/",
            "--users",
            "5",
            "--rooms",
            "2",
            "--connections",
            "7",
            "--duration",
            "2.5",
            "--warmup",
            "0",
            "--seed",
            "42",
            "--json",
            "/tmp/x.json",
            "--server-pid",
            "123",
            "--body-bytes",
            "10",
        ])
        .unwrap();
        let Cmd::Send(a) = &cli.command else {
            panic!("{cli:?}")
        };
        let c = &a.common;
        assert_eq!(
            (c.users, c.rooms, c.connections),
            (Some(5), Some(2), Some(7))
        );
        assert_eq!((c.duration, c.warmup, c.seed), (2.5, 0.0, 42));
        assert_eq!(c.json.as_deref(), Some(std::path::Path::new("/tmp/x.json")));
        assert_eq!(c.server_pid, Some(123));
        assert_eq!(a.body_bytes, 10);
        let cli = Cli::try_parse_from(["hearth-bench", "sync-idle"]).unwrap();
        let c = common_of(&cli.command).unwrap();
        assert_eq!(
            (c.users, c.duration, c.warmup, c.seed),
            (None, 10.0, 2.0, 1)
        );
        assert!(Cli::try_parse_from(["hearth-bench", "send", "--users", "x"]).is_err());
        assert!(Cli::try_parse_from(["hearth-bench", "mixed", "--mix", "fly=1"]).is_err());
        let cli = Cli::try_parse_from([
            "hearth-bench",
            "compare",
            "--scenarios",
            "send,sync-idle",
            "--peer",
            "synapse",
            "--hearth-url",
            "http://127.0.0.1:8008",
            "--duration",
            "3",
        ])
        .unwrap();
        let Cmd::Compare(a) = &cli.command else {
            panic!("{cli:?}")
        };
        assert_eq!(
            a.scenarios,
            vec!["send".to_string(), "sync-idle".to_string()]
        );
    }
}
