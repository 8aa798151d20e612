//! `hearth-bench`: load generator and benchmark rig for hearth and any other
//! Matrix homeserver. Scenarios are subcommands; figures go to bench/RESULTS.md.

mod db;
mod db_report;
mod http_load;
mod raw_responder;
mod report;
mod url;

use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hearth-bench", version, about = "Benchmark Matrix homeservers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Keep-alive load on one GET endpoint (default `/_matrix/client/versions`).
    Http {
        /// Full URL, e.g. http://127.0.0.1:8008/_matrix/client/versions
        #[arg(long, default_value = "http://127.0.0.1:8008/_matrix/client/versions")]
        url: String,
        /// Open connections, each with one request in flight at a time.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Load-generating threads (each a monoio runtime).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Seconds of load before measuring.
        #[arg(long, default_value_t = 2)]
        warmup: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
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

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Http {
            url,
            connections,
            threads,
            duration,
            warmup,
            json,
        } => {
            let target = url::Target::parse(&url)?;
            let result = http_load::run(
                &target,
                http_load::Load {
                    connections,
                    threads,
                    warmup: Duration::from_secs(warmup),
                    duration: Duration::from_secs(duration),
                },
            )?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&result.to_json("http", &url))?
                );
            } else {
                println!("{}", result.table("http", &url));
            }
            Ok(())
        }
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
    }
}
