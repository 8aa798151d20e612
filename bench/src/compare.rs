//! `compare`: each scenario against hearth and a peer in one run, alternating
//! (round 1 hearth first, round 2 peer first, …), same parameters, then a
//! ratio table. hearth is started here from a binary (embedded PostgreSQL in
//! a throwaway data dir) unless `--hearth-url` names a running one; the
//! Synapse peer is started with `bench/peers/synapse/start.sh`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{CompareInfo, ResultsFile, RunReport};
use crate::resources::postmaster_pid;
use crate::scenario::Common;
use crate::Cmd;

pub const SCENARIOS: [&str; 8] = [
    "http",
    "raw-responder",
    "send",
    "sync-idle",
    "sync-fanout",
    "sync-initial",
    "sync-initial-lazy",
    "mixed",
];

#[derive(clap::Args, Clone, Debug)]
pub struct CompareArgs {
    /// Comma-separated: http, send, sync-idle, sync-fanout, sync-initial, mixed.
    #[arg(long, value_delimiter = ',', default_value = "send")]
    pub scenarios: Vec<String>,
    /// The peer server (only `synapse`).
    #[arg(long, default_value = "synapse")]
    pub peer: String,
    /// Alternating rounds per scenario.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// hearth binary to start (release build for real figures).
    #[arg(long, default_value = "target/release/hearth")]
    pub hearth_bin: PathBuf,
    /// A running hearth instead of starting one (then --hearth-pid for /proc figures).
    #[arg(long)]
    pub hearth_url: Option<String>,
    #[arg(long)]
    pub hearth_pid: Option<u32>,
    /// Shards of the started hearth (default: number of CPUs).
    #[arg(long)]
    pub hearth_shards: Option<usize>,
    #[arg(long, default_value_t = 18448)]
    pub hearth_port: u16,
    /// The Synapse peer scripts (setup.sh must have run once).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/peers/synapse"))]
    pub peer_dir: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:18008")]
    pub peer_url: String,
    /// Leave the peer running at the end even if this run started it.
    #[arg(long)]
    pub keep_peer: bool,
    /// `sync-initial`: messages sent into each room during setup (E).
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Sizes of one scenario apart from the shared ones, so one run holds
    /// every scenario at its own size: `SCENARIO.KEY=N`, KEY one of users,
    /// rooms, connections, events, members (e.g. `sync-fanout.users=1000`).
    #[arg(long = "set", value_delimiter = ',')]
    pub overrides: Vec<String>,
    /// users/rooms/connections/duration/warmup/seed/json apply to every run;
    /// --url, --server-pid, --label are set per server.
    #[command(flatten)]
    pub common: Common,
}

/// A server under test: where it answers and which processes to watch.
struct Server {
    label: String,
    url: String,
    pid: Option<u32>,
    pg_pid: Option<u32>,
    child: Option<Child>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGTERM: hearth drains and stops its embedded PostgreSQL.
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_hearth(a: &CompareArgs) -> anyhow::Result<Server> {
    if let Some(url) = &a.hearth_url {
        return Ok(Server {
            label: "hearth".into(),
            url: url.clone(),
            pid: a.hearth_pid,
            pg_pid: None,
            child: None,
            _data_dir: None,
        });
    }
    let dir = tempfile::Builder::new().prefix("hearth-bench-").tempdir()?;
    // The embedded PostgreSQL runs as `postgres`, which must enter the dir.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let shards = a
        .hearth_shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let log = std::fs::File::create(dir.path().join("hearth.log"))?;
    let child = Command::new(&a.hearth_bin)
        .arg("serve")
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_SHARDS", shards.to_string())
        .env("HEARTH_DATA_DIR", dir.path())
        .env("HEARTH_LISTENERS__0__PORT", a.hearth_port.to_string())
        .env("HEARTH_LISTENERS__0__ADDRESS", "127.0.0.1")
        .env("HEARTH_LOG__ACCESS_LOG", "false")
        .env("HEARTH_RATE_LIMITS__ENABLED", "false")
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", a.hearth_bin.display()))?;
    let url = format!("http://127.0.0.1:{}", a.hearth_port);
    let mut s = Server {
        label: "hearth".into(),
        url: url.clone(),
        pid: Some(child.id()),
        pg_pid: None,
        child: Some(child),
        _data_dir: None,
    };
    eprintln!(
        "compare: starting hearth ({shards} shards) on {url}, data in {}",
        dir.path().display()
    );
    wait_ready(&url, Duration::from_secs(120), s.child.as_mut())?;
    s.pg_pid = postmaster_pid(&dir.path().join("postgres"));
    s._data_dir = Some(dir);
    Ok(s)
}

fn start_peer(a: &CompareArgs) -> anyhow::Result<(Server, bool)> {
    if a.peer != "synapse" {
        anyhow::bail!("unknown peer {:?} (only synapse)", a.peer);
    }
    let work = a.peer_dir.join(".work");
    let pidfile = work.join("synapse/homeserver.pid");
    let was_running = read_pid(&pidfile).is_some_and(alive);
    if !was_running {
        eprintln!(
            "compare: starting Synapse with {}/start.sh",
            a.peer_dir.display()
        );
        let st = Command::new(a.peer_dir.join("start.sh")).status()?;
        if !st.success() {
            anyhow::bail!("start.sh failed ({st}); did setup.sh run?");
        }
    }
    wait_ready(&a.peer_url, Duration::from_secs(120), None)?;
    Ok((
        Server {
            label: a.peer.clone(),
            url: a.peer_url.clone(),
            pid: read_pid(&pidfile),
            pg_pid: postmaster_pid(&work.join("pg/data")),
            child: None,
            _data_dir: None,
        },
        !was_running,
    ))
}

fn read_pid(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `GET /_matrix/client/versions` until it answers 200.
fn wait_ready(base: &str, timeout: Duration, mut child: Option<&mut Child>) -> anyhow::Result<()> {
    let target = crate::url::Target::parse(base)?;
    let t = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&target.addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let req = format!(
                "GET /_matrix/client/versions HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                target.host_header
            );
            let mut buf = [0u8; 12];
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_exact(&mut buf).is_ok()
                && buf.starts_with(b"HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if let Some(c) = child.as_deref_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                anyhow::bail!("the server exited during start-up ({st})");
            }
        }
        if t.elapsed() > timeout {
            anyhow::bail!("{base} did not answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The scenario command for one server: the shared parameters with the
/// scenario's `--set` overrides.
fn command_for(name: &str, mut common: Common, a: &CompareArgs) -> anyhow::Result<Cmd> {
    use crate::scenario::{mixed, send, sync};
    let mut events = a.events;
    let mut members = 1;
    for o in &a.overrides {
        let (key, value) = o
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--set {o:?}: expected SCENARIO.KEY=N"))?;
        let (scenario, key) = key
            .rsplit_once('.')
            .ok_or_else(|| anyhow::anyhow!("--set {o:?}: expected SCENARIO.KEY=N"))?;
        if !SCENARIOS.contains(&scenario) {
            anyhow::bail!("--set {o:?}: unknown scenario {scenario:?}");
        }
        let n: usize = value
            .parse()
            .map_err(|_| anyhow::anyhow!("--set {o:?}: {value:?} is not a number"))?;
        if scenario != name {
            continue;
        }
        match key {
            "users" => common.users = Some(n),
            "rooms" => common.rooms = Some(n),
            "connections" => common.connections = Some(n),
            "events" => events = n,
            "members" => members = n,
            other => anyhow::bail!(
                "--set {o:?}: unknown key {other:?} (users, rooms, connections, events, members)"
            ),
        }
    }
    Ok(match name {
        "http" | "raw-responder" => Cmd::Http(common),
        "send" => Cmd::Send(send::SendArgs {
            common,
            body_bytes: 64,
        }),
        "sync-idle" => Cmd::SyncIdle(sync::IdleArgs { common }),
        "sync-fanout" => Cmd::SyncFanout(sync::FanoutArgs {
            common,
            poll_timeout_ms: 30_000,
        }),
        "sync-initial" | "sync-initial-lazy" => Cmd::SyncInitial(sync::InitialArgs {
            common,
            events,
            members,
            lazy: name == "sync-initial-lazy",
        }),
        "mixed" => Cmd::Mixed(mixed::MixedArgs {
            common,
            think_ms: 100,
            mix: mixed::parse_mix("send=50,receipt=25,typing=25").map_err(anyhow::Error::msg)?,
        }),
        other => anyhow::bail!(
            "unknown scenario {other:?}; known: {}",
            SCENARIOS.join(", ")
        ),
    })
}

/// `hearth-bench raw-responder` as a child on a free loopback port: the
/// `raw-responder` scenario's server (the HTTP floor of the runtime on this
/// machine, with as many threads as hearth has shards).
fn start_raw_responder(a: &CompareArgs) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("127.0.0.1:{port}");
    let threads = a
        .hearth_shards
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut child = Command::new(std::env::current_exe()?)
        .args(["raw-responder", "--listen", &listen, "--threads"])
        .arg(threads.to_string())
        .stdout(Stdio::null())
        .spawn()?;
    let url = format!("http://{listen}");
    if let Err(e) = wait_ready(&url, Duration::from_secs(10), Some(&mut child)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(Server {
        label: "raw-responder".into(),
        url,
        pid: Some(child.id()),
        pg_pid: None,
        child: Some(child),
        _data_dir: None,
    })
}

fn git_rev() -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let rev = out(&["rev-parse", "--short=10", "HEAD"]);
    let dirty = !out(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty {
        format!("{rev}-dirty")
    } else {
        rev
    }
}

pub fn run(a: &CompareArgs) -> anyhow::Result<()> {
    for s in &a.scenarios {
        command_for(s, a.common.clone(), a)?;
    }
    let hearth = start_hearth(a)?;
    let (peer, started_peer) = start_peer(a)?;
    let result = run_rounds(a, &hearth, &peer);
    drop(hearth);
    if started_peer && !a.keep_peer {
        let _ = Command::new(a.peer_dir.join("stop.sh")).status();
    }
    let mut file = result?;
    let mut settings = BTreeMap::new();
    settings.insert(
        "hearth".into(),
        match &a.hearth_url {
            Some(u) => format!("running at {u}"),
            None => format!(
            "{} serve, {} shards, access log off, embedded PostgreSQL with tuning/postgresql.conf",
            a.hearth_bin.display(),
            a.hearth_shards.map_or("nproc".into(), |n| n.to_string())
        ),
        },
    );
    settings.insert(
        a.peer.clone(),
        "bench/peers/synapse: PostgreSQL 15 over a unix socket with tuning/postgresql.conf, cp_min 5 / cp_max 10, presence off, rate limits off, logging WARNING".into(),
    );
    settings.insert("rounds".into(), a.rounds.to_string());
    let peer_version = file
        .runs
        .iter()
        .filter(|r| r.label == a.peer)
        .find_map(|r| r.server_header.clone())
        .unwrap_or_else(|| "unknown".into());
    file.compare = Some(CompareInfo {
        peer: a.peer.clone(),
        hearth_version: git_rev(),
        peer_version,
        settings,
    });
    println!("{}", file.ratio_table());
    if let Some(path) = &a.common.json {
        file.write(path)?;
        eprintln!("compare: results in {}", path.display());
    }
    Ok(())
}

fn run_rounds(a: &CompareArgs, hearth: &Server, peer: &Server) -> anyhow::Result<ResultsFile> {
    let mut runs: Vec<RunReport> = Vec::new();
    for round in 0..a.rounds.max(1) {
        for name in &a.scenarios {
            let raw = if name == "raw-responder" {
                Some(start_raw_responder(a)?)
            } else {
                None
            };
            let order: Vec<&Server> = match &raw {
                Some(r) => vec![r],
                None if round % 2 == 0 => vec![hearth, peer],
                None => vec![peer, hearth],
            };
            for server in order {
                let mut common = a.common.clone();
                common.url = server.url.clone();
                common.label = Some(server.label.clone());
                common.server_pid = server.pid;
                common.pg_pid = server.pg_pid;
                common.json = None;
                eprintln!(
                    "compare: round {} {name} against {}",
                    round + 1,
                    server.label
                );
                let cmd = command_for(name, common, a)?;
                let report = crate::run_scenario(&cmd)
                    .unwrap_or_else(|| Err(anyhow::anyhow!("{name} is not a scenario")));
                match report {
                    Ok(mut r) => {
                        r.notes.push(format!("round {}", round + 1));
                        println!("{}", r.table());
                        runs.push(r);
                    }
                    // A scenario the server cannot set up (e.g. an endpoint
                    // it lacks) is reported, and the comparison goes on.
                    Err(e) => eprintln!("compare: {name} against {} failed: {e:#}", server.label),
                }
            }
        }
    }
    Ok(ResultsFile::new(runs))
}
