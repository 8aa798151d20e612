//! `hearth-bench db`: hearth's own PostgreSQL client against an event-like
//! table, in the write shapes the server uses. The point is to show what
//! pipelining and group commit buy over one-transaction-per-insert while
//! keeping `synchronous_commit = on` (every acknowledged write is durable).
//!
//! Everything runs on one monoio runtime on the calling thread, like one
//! shard. Each mode is a closed loop: every caller keeps one operation in
//! flight, so latency is per operation and throughput is what it sustains.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use hearth::db::{
    ConnectConfig, Connection, DbError, GroupCommit, GroupCommitConfig, GroupCommitStats, Pool,
    PoolConfig, SqlValue, Write,
};
use serde_json::json;

use crate::db_report::{Batching, DbReport, ModeResult, ServerInfo};
use crate::run_result::RunResult;

/// One measured write or read shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One INSERT per transaction, one at a time on one connection.
    InsertSingle,
    /// N callers pipelined on one connection, each INSERT its own transaction.
    InsertPipelined,
    /// N callers through `GroupCommit`, each resolved after its batch's COMMIT.
    InsertGroupCommit,
    /// Point SELECTs by primary key, N callers pipelined on a pool.
    SelectPoint,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::InsertSingle,
        Mode::InsertPipelined,
        Mode::InsertGroupCommit,
        Mode::SelectPoint,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::InsertSingle => "insert-single",
            Mode::InsertPipelined => "insert-pipelined",
            Mode::InsertGroupCommit => "insert-group-commit",
            Mode::SelectPoint => "select-point",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DbArgs {
    /// postgres://user[:password]@host[:port]/dbname (`?host=/dir` for a unix socket).
    #[arg(long)]
    pub url: String,
    /// Seconds to measure, per mode.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of load before measuring, per mode.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Concurrent callers (insert-single always uses one).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Modes to run, comma-separated (default: all, in order).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Mode::ALL)]
    pub modes: Vec<Mode>,
    /// Pool connections for select-point (and the floor for group commit).
    #[arg(long, default_value_t = 2)]
    pub pool_size: usize,
    /// GroupCommitConfig::max_batch.
    #[arg(long, default_value_t = 256)]
    pub gc_max_batch: usize,
    /// GroupCommitConfig::max_delay in microseconds.
    #[arg(long, default_value_t = 2000)]
    pub gc_max_delay_us: u64,
    /// GroupCommitConfig::max_in_flight (batches committing at once).
    #[arg(long, default_value_t = 2)]
    pub gc_max_in_flight: usize,
    /// Rows loaded before select-point.
    #[arg(long, default_value_t = 100_000)]
    pub select_rows: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

impl DbArgs {
    fn gc_config(&self) -> GroupCommitConfig {
        GroupCommitConfig {
            max_batch: self.gc_max_batch.max(1),
            max_delay: Duration::from_micros(self.gc_max_delay_us),
            max_in_flight: self.gc_max_in_flight.max(1),
            ..GroupCommitConfig::default()
        }
    }
}

const TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS bench_events (
    stream_ordering bigserial,
    room_id text NOT NULL,
    event_id text PRIMARY KEY,
    sender text NOT NULL,
    type text NOT NULL,
    json jsonb NOT NULL
)";

const INSERT: &str =
    "INSERT INTO bench_events (room_id, event_id, sender, type, json) VALUES ($1, $2, $3, $4, $5)";

const SELECT: &str =
    "SELECT stream_ordering, room_id, sender, type, json FROM bench_events WHERE event_id = $1";

const ROOMS: usize = 16;
const SENDER: &str = "@bench:localhost";
const EVENT_TYPE: &str = "m.room.message";
const BODY: &str = "The quick brown fox jumps over the lazy dog, a message of typical size.";

/// Run the selected modes and collect their results.
pub fn run(args: &DbArgs) -> anyhow::Result<DbReport> {
    let cfg = ConnectConfig::from_url(&args.url)?;
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()?;
    rt.block_on(run_all(cfg, args))
}

async fn run_all(cfg: ConnectConfig, args: &DbArgs) -> anyhow::Result<DbReport> {
    let admin = Connection::connect(&cfg).await?;
    admin.batch_execute(TABLE_DDL).await?;
    let server = server_info(&admin).await?;
    if server.synchronous_commit != "on" || server.fsync != "on" {
        anyhow::bail!(
            "durability is off (synchronous_commit={}, fsync={}): the figures would be meaningless",
            server.synchronous_commit,
            server.fsync
        );
    }
    let window = |start: Instant| Window {
        from: start + Duration::from_secs(args.warmup),
        end: start + Duration::from_secs(args.warmup + args.duration),
    };
    let callers = args.concurrency.max(1);
    let mut modes = Vec::new();
    for &mode in &args.modes {
        reset(&admin).await?;
        let (result, batching) = match mode {
            Mode::InsertSingle => {
                let conn = Connection::connect(&cfg).await?;
                let w = window(Instant::now());
                let t = closed_loop(1, w, move |c, seq| {
                    let conn = conn.clone();
                    async move { insert_direct(&conn, c, seq).await }
                })
                .await;
                (t, None)
            }
            Mode::InsertPipelined => {
                let conn = Connection::connect(&cfg).await?;
                let w = window(Instant::now());
                let t = closed_loop(callers, w, move |c, seq| {
                    let conn = conn.clone();
                    async move { insert_direct(&conn, c, seq).await }
                })
                .await;
                (t, None)
            }
            Mode::InsertGroupCommit => {
                let gc_cfg = args.gc_config();
                let pool = Pool::connect(
                    cfg.clone(),
                    PoolConfig {
                        size: args.pool_size.max(gc_cfg.max_in_flight),
                        ..PoolConfig::default()
                    },
                )
                .await?;
                let gc = GroupCommit::new(pool, gc_cfg);
                let w = window(Instant::now());
                // Snapshot the batching counters when measuring starts.
                let at_start = Rc::new(RefCell::new(GroupCommitStats::default()));
                let snap = {
                    let (gc, at_start) = (gc.clone(), at_start.clone());
                    monoio::spawn(async move {
                        monoio::time::sleep(w.from.saturating_duration_since(Instant::now())).await;
                        *at_start.borrow_mut() = gc.stats();
                    })
                };
                let gc2 = gc.clone();
                let t = closed_loop(callers, w, move |c, seq| {
                    let gc = gc2.clone();
                    async move {
                        gc.submit(Write::new().statement(INSERT, insert_params(c, seq)))
                            .await
                            .map(|_| ())
                            .map_err(Failure::from)
                    }
                })
                .await;
                snap.await;
                let seen = Batching::between(*at_start.borrow(), gc.stats());
                (t, Some(seen))
            }
            Mode::SelectPoint => {
                load_rows(&admin, args.select_rows.max(1)).await?;
                let pool = Pool::connect(
                    cfg.clone(),
                    PoolConfig {
                        size: args.pool_size.max(1),
                        ..PoolConfig::default()
                    },
                )
                .await?;
                let rows = args.select_rows.max(1);
                let w = window(Instant::now());
                let t = closed_loop(callers, w, move |c, seq| {
                    let pool = pool.clone();
                    async move {
                        let key = format!("$sel{}:localhost", pick(c, seq, rows));
                        match pool.query_opt(SELECT, &[&key]).await {
                            Ok(Some(_)) => Ok(()),
                            Ok(None) => Err(Failure::Other("row not found".into())),
                            Err(e) => Err(e.into()),
                        }
                    }
                })
                .await;
                (t, None)
            }
        };
        let threads = if mode == Mode::InsertSingle {
            1
        } else {
            callers
        };
        modes.push(ModeResult {
            mode,
            result: result.into_run_result(Duration::from_secs(args.duration), threads),
            batching,
        });
    }
    reset(&admin).await?;
    Ok(DbReport {
        target: redact(&args.url),
        server,
        duration: Duration::from_secs(args.duration),
        warmup: Duration::from_secs(args.warmup),
        modes,
    })
}

async fn server_info(conn: &Connection) -> anyhow::Result<ServerInfo> {
    let show = |name: &'static str| async move {
        let rows = conn.simple_query(&format!("SHOW {name}")).await?;
        Ok::<String, DbError>(
            rows.first()
                .and_then(|r| r.get(0))
                .unwrap_or("?")
                .to_owned(),
        )
    };
    Ok(ServerInfo {
        version: show("server_version").await?,
        synchronous_commit: show("synchronous_commit").await?,
        fsync: show("fsync").await?,
        wal_sync_method: show("wal_sync_method").await?,
        commit_delay: show("commit_delay").await?,
    })
}

/// Empty the table and checkpoint, so a mode does not pay for the previous
/// one's dirty pages. CHECKPOINT needs superuser/pg_checkpoint: best effort.
async fn reset(admin: &Connection) -> anyhow::Result<()> {
    admin
        .batch_execute("TRUNCATE bench_events RESTART IDENTITY")
        .await?;
    let _ = admin.batch_execute("CHECKPOINT").await;
    Ok(())
}

/// Rows `$sel1:localhost` .. `$sel{n}:localhost` for point reads.
async fn load_rows(admin: &Connection, n: u64) -> anyhow::Result<()> {
    admin
        .batch_execute(&format!(
            "INSERT INTO bench_events (room_id, event_id, sender, type, json)
             SELECT '!room' || (i % {ROOMS}) || ':localhost', '$sel' || i || ':localhost',
                    '{SENDER}', '{EVENT_TYPE}',
                    jsonb_build_object('event_id', '$sel' || i || ':localhost',
                        'room_id', '!room' || (i % {ROOMS}) || ':localhost',
                        'sender', '{SENDER}', 'type', '{EVENT_TYPE}',
                        'origin_server_ts', i,
                        'content', jsonb_build_object('msgtype', 'm.text', 'body', '{BODY}'))
             FROM generate_series(1, {n}) AS i"
        ))
        .await?;
    admin.batch_execute("VACUUM ANALYZE bench_events").await?;
    Ok(())
}

/// An event row; ids are unique per (caller, seq) within a mode.
fn insert_params(caller: usize, seq: u64) -> Vec<SqlValue> {
    let room = format!("!room{}:localhost", caller % ROOMS);
    let event_id = event_id(caller, seq);
    let json = json!({
        "event_id": event_id,
        "room_id": room,
        "sender": SENDER,
        "type": EVENT_TYPE,
        "origin_server_ts": seq,
        "content": { "msgtype": "m.text", "body": BODY },
    });
    vec![
        SqlValue::Text(room),
        SqlValue::Text(event_id),
        SqlValue::Text(SENDER.to_owned()),
        SqlValue::Text(EVENT_TYPE.to_owned()),
        SqlValue::Jsonb(json),
    ]
}

async fn insert_direct(conn: &Connection, caller: usize, seq: u64) -> Result<(), Failure> {
    let p = insert_params(caller, seq);
    let refs: Vec<&dyn hearth::db::ToSql> = p.iter().map(|v| v as _).collect();
    match conn.execute(INSERT, &refs).await? {
        1 => Ok(()),
        n => Err(Failure::Other(format!("inserted {n} rows"))),
    }
}

/// splitmix64's finalizer: a bijection on u64, so distinct inputs give
/// distinct, well-spread outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A unique, hash-like event id for (caller, seq): real event ids are
/// hashes, so inserts land all over the primary-key index, as pgbench's
/// random UUIDs do. Unique while caller < 2^24 and seq < 2^40.
fn event_id(caller: usize, seq: u64) -> String {
    let n = ((caller as u64) << 40) | (seq & ((1 << 40) - 1));
    let h = mix64(n);
    format!("${h:016x}{:016x}:localhost", mix64(h ^ 0x5EED))
}

/// A cheap, deterministic spread of keys in `1..=rows`.
fn pick(caller: usize, seq: u64, rows: u64) -> u64 {
    mix64(((caller as u64) << 40) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15)) % rows + 1
}

/// Why one operation failed, as an error-table key.
enum Failure {
    Db(DbError),
    Other(String),
}

impl From<DbError> for Failure {
    fn from(e: DbError) -> Self {
        Failure::Db(e)
    }
}

impl Failure {
    fn key(&self) -> String {
        match self {
            Failure::Db(DbError::Server { code, .. }) => format!("sqlstate {code}"),
            Failure::Db(e) => {
                let s = e.to_string();
                s.chars().take(60).collect()
            }
            Failure::Other(s) => s.clone(),
        }
    }
}

#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    end: Instant,
}

struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

impl Tally {
    fn into_run_result(self, elapsed: Duration, callers: usize) -> RunResult {
        RunResult {
            ok: self.ok,
            errors: self.errors,
            elapsed,
            latency_us: self.hist,
            connections: callers,
        }
    }
}

fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant digits; the bounds are constants.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds")
}

/// `callers` tasks, each running `op(caller, seq)` back to back until the
/// window ends; operations completing inside the window are counted.
async fn closed_loop<F, Fut>(callers: usize, w: Window, op: F) -> Tally
where
    F: Fn(usize, u64) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<(), Failure>> + 'static,
{
    let tally = Rc::new(RefCell::new(Tally {
        ok: 0,
        errors: BTreeMap::new(),
        hist: new_hist(),
    }));
    let mut tasks = Vec::with_capacity(callers);
    for c in 0..callers {
        let (op, tally) = (op.clone(), tally.clone());
        tasks.push(monoio::spawn(async move {
            let mut seq = 0u64;
            while Instant::now() < w.end {
                let t0 = Instant::now();
                let r = op(c, seq).await;
                seq += 1;
                let now = Instant::now();
                let counted = now >= w.from && now < w.end;
                match r {
                    Ok(()) if counted => {
                        let mut t = tally.borrow_mut();
                        t.ok += 1;
                        t.hist
                            .saturating_record(now.duration_since(t0).as_micros().max(1) as u64);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        if counted {
                            *tally.borrow_mut().errors.entry(e.key()).or_insert(0) += 1;
                        }
                        // Do not spin on a dead connection.
                        monoio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    match Rc::try_unwrap(tally) {
        Ok(t) => t.into_inner(),
        // All tasks were awaited, so this is the only handle left.
        Err(rc) => {
            let t = rc.borrow();
            Tally {
                ok: t.ok,
                errors: t.errors.clone(),
                hist: t.hist.clone(),
            }
        }
    }
}

/// The URL with any password (in the authority or `?password=`) replaced,
/// for printing.
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => head.to_owned(),
                },
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if let Some(q) = query {
        let parts: Vec<&str> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***",
                _ => kv,
            })
            .collect();
        out.push('?');
        out += &parts.join("&");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        db: DbArgs,
    }

    fn parse(args: &[&str]) -> Result<DbArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("db").chain(args.iter().copied())).map(|w| w.db)
    }

    #[test]
    fn arguments_parse_with_defaults_and_mode_lists() {
        let a = parse(&["--url", "postgres://u@h/d"]).unwrap();
        assert_eq!(a.modes, Mode::ALL.to_vec());
        assert_eq!((a.duration, a.warmup, a.concurrency), (10, 2, 64));
        assert!(!a.json);
        let gc = a.gc_config();
        assert_eq!(gc.max_delay, Duration::from_millis(2));
        let a = parse(&[
            "--url",
            "postgres://u@h/d",
            "--modes",
            "insert-group-commit,select-point",
            "--concurrency",
            "8",
            "--gc-max-in-flight",
            "0",
            "--json",
        ])
        .unwrap();
        assert_eq!(a.modes, vec![Mode::InsertGroupCommit, Mode::SelectPoint]);
        assert_eq!(a.concurrency, 8);
        assert_eq!(a.gc_config().max_in_flight, 1, "clamped to at least one");
        assert!(a.json);
        assert!(
            parse(&["--modes", "insert-single"]).is_err(),
            "--url is required"
        );
        assert!(parse(&["--url", "x", "--modes", "nope"]).is_err());
    }

    #[test]
    fn mode_names_match_the_cli() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_str(m.name(), false), Ok(m));
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://bob:secret@db:5432/hearth"),
            "postgres://bob:***@db:5432/hearth"
        );
        assert_eq!(redact("postgres://bob@db/h"), "postgres://bob@db/h");
        assert_eq!(
            redact("postgres://bob@/h?host=/tmp&password=x"),
            "postgres://bob@/h?host=/tmp&password=***"
        );
        assert_eq!(redact("postgres://a:b@c?x=1"), "postgres://a:***@c?x=1");
    }

    #[test]
    fn event_ids_are_unique_and_hash_like() {
        let mut seen = std::collections::HashSet::new();
        for caller in 0..64 {
            for seq in 0..200 {
                assert!(seen.insert(event_id(caller, seq)));
            }
        }
        let id = event_id(1, 2);
        assert!(
            id.starts_with('$') && id.ends_with(":localhost") && id.len() == 43,
            "{id}"
        );
    }

    #[test]
    fn keys_are_spread_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for seq in 0..1000 {
            let k = pick(3, seq, 100);
            assert!((1..=100).contains(&k));
            seen.insert(k);
        }
        assert!(seen.len() > 90, "only {} distinct keys", seen.len());
    }
}
