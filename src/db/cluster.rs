//! The embedded default: a PostgreSQL cluster that hearth initialises, starts,
//! supervises and stops itself, reachable only through a Unix socket inside
//! hearth's data directory.
//!
//! Layout under `data_dir`:
//! - `postgres/` — the cluster (PGDATA), owned by the server user, mode 0700;
//! - `pgsock/`   — the socket directory (`.s.PGSQL.<port>`), mode 0700;
//! - `postgres.log` — the server's stderr.
//!
//! The superuser is named `hearth` (not `postgres`): it is hearth's private
//! cluster, and the name makes log lines and `pg_stat_activity` self-explaining.
//! Local (socket) connections use `trust`; that is safe because only the server
//! user (and root) can enter the 0700 socket directory. TCP is off unless a
//! caller (the test harness) asks for it, with a chosen [`AuthMethod`].
//!
//! Everything here is blocking process management: call it on the main thread
//! before shards start; the supervisor runs on its own thread.

mod relocate;
mod supervisor;
mod sys;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use sys::pg_bin_dir;
pub(crate) use sys::{is_root, lookup_user, pg_command, RunAs};

/// Throughput tuning shipped with hearth (see `tuning/postgresql.md`).
pub const TUNING_CONF: &str = include_str!("../../tuning/postgresql.conf");

/// Unix socket paths (`sun_path`) hold at most 107 bytes plus the NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Marker line we append to `postgresql.conf` once, pulling in our files.
const INCLUDE_MARKER: &str = "# hearth: settings below are managed by hearth";

/// Errors of cluster process management.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH \
         nor under /usr/lib/postgresql/*/bin; install them: `apt-get install postgresql` \
         (Debian/Ubuntu), `dnf install postgresql-server` (Fedora/RHEL)"
    )]
    BinariesNotFound,
    #[error(
        "PostgreSQL refuses to run as root and the user {0:?} to run it as does not exist; \
         create it (`useradd --system --home-dir /var/lib/postgresql postgres`) or configure \
         another run_as user"
    )]
    NoSuchUser(String),
    #[error(
        "the PostgreSQL server user {user:?} cannot enter {dir} (mode {mode:o}); \
         make it traversable (`chmod o+x {dir}`) or choose a data dir elsewhere"
    )]
    NotTraversable {
        dir: PathBuf,
        user: String,
        mode: u32,
    },
    #[error(
        "unix socket path {path} is {len} bytes, the limit is {MAX_SOCKET_PATH}; \
         use a shorter data dir"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("{path} exists and is not empty but holds no PostgreSQL cluster (no PG_VERSION); refusing to touch it")]
    NotACluster { path: PathBuf },
    #[error("a postmaster (pid {pid}) that is not ours still runs on {data_dir}; stop it first")]
    AlreadyRunning { pid: i32, data_dir: PathBuf },
    #[error("invalid cluster configuration: {0}")]
    InvalidConfig(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        tool: String,
        status: String,
        output: String,
    },
    #[error("PostgreSQL did not start: {reason}; last log lines:\n{log_tail}")]
    StartFailed { reason: String, log_tail: String },
    #[error("PostgreSQL is not ready after {0:?} (the supervisor keeps retrying; see the log)")]
    NotReady(Duration),
    #[error("the cluster has been stopped")]
    Stopped,
}

impl ClusterError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            what: what.into(),
            source,
        }
    }
}

/// `pg_hba.conf` method required for TCP connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    Trust,
    /// Cleartext password (`password`).
    Password,
    Md5,
    ScramSha256,
}

impl AuthMethod {
    /// The keyword in `pg_hba.conf`.
    pub fn hba_keyword(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
        }
    }

    /// `password_encryption` needed so a newly set password works with this
    /// method (md5 auth needs an md5-hashed password; the others accept scram).
    pub fn password_encryption(self) -> &'static str {
        match self {
            AuthMethod::Md5 => "md5",
            _ => "scram-sha-256",
        }
    }
}

/// How to stop the postmaster (the signals `pg_ctl stop -m …` sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// SIGINT: disconnect sessions, checkpoint, exit. Clean.
    Fast,
    /// SIGQUIT: exit at once; crash recovery on the next start. For throwaways.
    Immediate,
}

impl ShutdownMode {
    pub(crate) fn signal(self) -> libc::c_int {
        match self {
            ShutdownMode::Fast => libc::SIGINT,
            ShutdownMode::Immediate => libc::SIGQUIT,
        }
    }
}

/// What [`Cluster::ensure`] sets up.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// hearth's data directory; the cluster lives in `data_dir/postgres`.
    pub data_dir: PathBuf,
    /// Port number; with TCP off it only names the socket file.
    pub port: u16,
    /// Also listen on TCP at this address (`None`: Unix socket only).
    pub listen_tcp: Option<IpAddr>,
    /// `pg_hba.conf` method for TCP connections.
    pub tcp_auth: AuthMethod,
    /// User the server runs as when hearth runs as root (default `postgres`).
    pub run_as: Option<String>,
    /// Cluster superuser (initdb `-U`).
    pub superuser: String,
    /// Database created if missing.
    pub dbname: String,
    /// Extra `postgresql.conf` settings applied after the tuning file (they win),
    /// e.g. `max_connections` sized from shards × pool.
    pub settings: Vec<(String, String)>,
    /// Throwaway cluster: `initdb --no-sync`, `fsync = off`. Never for real data.
    pub ephemeral: bool,
    /// How long a (re)start may take before it counts as failed.
    pub start_timeout: Duration,
    /// How long a fast shutdown may take before escalating to immediate.
    pub stop_timeout: Duration,
    /// What the postmaster does if hearth dies without stopping it.
    pub on_parent_death: ShutdownMode,
    /// As root, where the cluster goes when the server user cannot reach
    /// `data_dir` (see `relocate.rs`); tests point it at a temp dir.
    pub relocate_root: PathBuf,
}

impl ClusterConfig {
    /// Defaults for hearth's own cluster in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            data_dir: data_dir.into(),
            port: 5432,
            listen_tcp: None,
            tcp_auth: AuthMethod::ScramSha256,
            run_as: None,
            superuser: "hearth".into(),
            dbname: "hearth".into(),
            settings: Vec::new(),
            ephemeral: false,
            start_timeout: Duration::from_secs(120),
            stop_timeout: Duration::from_secs(60),
            on_parent_death: ShutdownMode::Fast,
            relocate_root: PathBuf::from(relocate::RELOCATED_ROOT),
        }
    }
}

/// Connection parameters of the embedded cluster, for the wire client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedDb {
    pub socket_dir: PathBuf,
    pub port: u16,
    pub user: String,
    pub dbname: String,
    /// TCP address, when the cluster listens on TCP too.
    pub tcp: Option<SocketAddr>,
}

impl EmbeddedDb {
    /// Path of the Unix socket: `<socket_dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }
}

/// A running, supervised cluster. Dropping it stops the server (fast mode).
pub struct Cluster {
    info: EmbeddedDb,
    bin_dir: PathBuf,
    pgdata: PathBuf,
    log_path: PathBuf,
    start_timeout: Duration,
    shared: Arc<supervisor::Shared>,
    supervisor: Mutex<Option<supervisor::Handle>>,
}

impl Cluster {
    /// Initialises the cluster on first use, (re)writes its settings, starts it
    /// under a supervisor thread, and creates the database if missing.
    pub fn ensure(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        validate(&cfg)?;
        let bin_dir = pg_bin_dir()?;
        let run_as = if is_root() {
            Some(lookup_user(cfg.run_as.as_deref().unwrap_or("postgres"))?)
        } else {
            if let Some(u) = &cfg.run_as {
                tracing::warn!(run_as = %u, "not root: PostgreSQL runs as the current user instead");
            }
            None
        };
        sys::create_dirs_traversable(&cfg.data_dir)?;
        let data_dir = std::fs::canonicalize(&cfg.data_dir)
            .map_err(|e| ClusterError::io(format!("resolving {}", cfg.data_dir.display()), e))?;
        // As root, an unreachable data dir moves the cluster (relocate.rs).
        let relocate::Home { pgdata, socket_dir } =
            relocate::resolve_in(&data_dir, run_as.as_ref(), &cfg.relocate_root)?;
        let socket_file = socket_dir.join(format!(".s.PGSQL.{}", cfg.port));
        let len = socket_file.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(ClusterError::SocketPathTooLong {
                path: socket_file,
                len,
            });
        }
        sys::private_dir(&socket_dir, run_as.as_ref())?;
        if !pgdata.join("PG_VERSION").exists() {
            initdb(&cfg, &bin_dir, &pgdata, run_as.as_ref())?;
        }
        write_settings(&cfg, &pgdata, &socket_dir, run_as.as_ref())?;

        let log_path = data_dir.join("postgres.log");
        let spec = supervisor::Spec {
            bin_dir: bin_dir.clone(),
            pgdata: pgdata.clone(),
            socket_lock: socket_dir.join(format!(".s.PGSQL.{}.lock", cfg.port)),
            log_path: log_path.clone(),
            run_as,
            start_timeout: cfg.start_timeout,
            stop_timeout: cfg.stop_timeout,
            on_parent_death: cfg.on_parent_death,
        };
        let shared = Arc::new(supervisor::Shared::default());
        let handle = supervisor::spawn(spec, shared.clone())?;
        let cluster = Cluster {
            info: EmbeddedDb {
                socket_dir,
                port: cfg.port,
                user: cfg.superuser.clone(),
                dbname: cfg.dbname.clone(),
                tcp: cfg.listen_tcp.map(|ip| SocketAddr::new(ip, cfg.port)),
            },
            bin_dir,
            pgdata,
            log_path,
            start_timeout: cfg.start_timeout,
            shared,
            supervisor: Mutex::new(Some(handle)),
        };
        cluster.create_database(&cfg.dbname, None)?;
        Ok(cluster)
    }

    /// Where and as whom to connect.
    pub fn info(&self) -> &EmbeddedDb {
        &self.info
    }

    /// The cluster directory (PGDATA).
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The PostgreSQL installation in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Pid of the current postmaster, if one is up.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.shared.pid()
    }

    /// How many times the supervisor restarted a dead postmaster.
    pub fn restarts(&self) -> u64 {
        self.shared.restarts()
    }

    /// Blocks until the postmaster is up and ready (e.g. after a restart).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        self.shared.wait_ready(timeout)
    }

    /// Runs SQL through `psql` over the socket as the superuser; returns the
    /// unaligned, tuples-only output. For setup and tests, not the hot path.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let out = pg_command(&self.bin_dir, "psql", None)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.info.socket_dir)
            .args(["-p", &self.info.port.to_string(), "-U", &self.info.user])
            .args(["-d", dbname, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ClusterError::io("running psql", e))?;
        if !out.status.success() {
            return Err(ClusterError::Tool {
                tool: "psql".into(),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Creates database `name` (owned by `owner`) unless it exists.
    pub fn create_database(&self, name: &str, owner: Option<&str>) -> Result<(), ClusterError> {
        self.wait_ready(self.start_timeout)?;
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(name)
            ),
        )?;
        if exists.is_empty() {
            let mut sql = format!("CREATE DATABASE {}", quote_ident(name));
            if let Some(o) = owner {
                let _ = write!(sql, " OWNER {}", quote_ident(o));
            }
            self.psql("postgres", &sql)?;
        }
        Ok(())
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast` semantics). Idempotent.
    pub fn stop(&self) -> Result<(), ClusterError> {
        self.stop_with(ShutdownMode::Fast)
    }

    /// Stops the server with the given mode and ends supervision. Idempotent.
    pub fn stop_with(&self, mode: ShutdownMode) -> Result<(), ClusterError> {
        let handle = match self.supervisor.lock() {
            Ok(mut g) => g.take(),
            // A panic while holding this lock cannot leave the Option invalid.
            Err(poisoned) => poisoned.into_inner().take(),
        };
        match handle {
            Some(h) => h.stop(mode),
            None => Ok(()),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping embedded PostgreSQL failed");
        }
    }
}

fn validate(cfg: &ClusterConfig) -> Result<(), ClusterError> {
    for (what, v) in [("superuser", &cfg.superuser), ("dbname", &cfg.dbname)] {
        if v.is_empty() || v.contains('\0') {
            return Err(ClusterError::InvalidConfig(format!("{what} {v:?}")));
        }
    }
    if cfg.port == 0 {
        return Err(ClusterError::InvalidConfig("port 0".into()));
    }
    for (k, v) in &cfg.settings {
        let key_ok = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !key_ok || v.contains(['\n', '\r', '\0']) {
            return Err(ClusterError::InvalidConfig(format!(
                "setting {k:?} = {v:?}"
            )));
        }
    }
    Ok(())
}

/// `initdb` with C locale, UTF-8, checksums, socket trust, TCP rejected (our
/// own `pg_hba.conf` replaces that on every start anyway).
fn initdb(
    cfg: &ClusterConfig,
    bin_dir: &Path,
    pgdata: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), ClusterError> {
    if let Ok(mut entries) = std::fs::read_dir(pgdata) {
        if entries.next().is_some() {
            return Err(ClusterError::NotACluster {
                path: pgdata.to_path_buf(),
            });
        }
    }
    sys::private_dir(pgdata, run_as)?;
    tracing::info!(pgdata = %pgdata.display(), "initialising PostgreSQL cluster");
    let mut cmd = pg_command(bin_dir, "initdb", run_as);
    cmd.arg("-D")
        .arg(pgdata)
        .args(["-U", &cfg.superuser, "-E", "UTF8", "--locale=C"])
        .args([
            "--auth-local=trust",
            "--auth-host=reject",
            "--data-checksums",
        ]);
    if cfg.ephemeral {
        cmd.arg("--no-sync");
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ClusterError::io("running initdb", e))?;
    if !out.status.success() {
        return Err(ClusterError::Tool {
            tool: "initdb".into(),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Writes `hearth-tuning.conf`, `hearth-instance.conf` and `pg_hba.conf` on
/// every start (so upgrades of hearth's tuning apply), and makes
/// `postgresql.conf` include the first two once.
fn write_settings(
    cfg: &ClusterConfig,
    pgdata: &Path,
    socket_dir: &Path,
    run_as: Option<&RunAs>,
) -> Result<(), ClusterError> {
    sys::write_owned(&pgdata.join("hearth-tuning.conf"), TUNING_CONF, run_as)?;
    sys::write_owned(
        &pgdata.join("hearth-instance.conf"),
        &instance_conf(cfg, socket_dir),
        run_as,
    )?;
    sys::write_owned(&pgdata.join("pg_hba.conf"), &hba_conf(cfg.tcp_auth), run_as)?;

    let main = pgdata.join("postgresql.conf");
    let text = std::fs::read_to_string(&main)
        .map_err(|e| ClusterError::io(format!("reading {}", main.display()), e))?;
    if !text.contains(INCLUDE_MARKER) {
        let mut new = text;
        let _ = write!(
            new,
            "\n{INCLUDE_MARKER}\ninclude 'hearth-tuning.conf'\ninclude 'hearth-instance.conf'\n"
        );
        sys::write_owned(&main, &new, run_as)?;
    }
    Ok(())
}

fn instance_conf(cfg: &ClusterConfig, socket_dir: &Path) -> String {
    let listen = cfg.listen_tcp.map(|ip| ip.to_string()).unwrap_or_default();
    let mut s = String::from("# Written by hearth on every start; edits are overwritten.\n");
    let mut set = |k: &str, v: &str| {
        let _ = writeln!(s, "{k} = {}", quote_literal(v));
    };
    set("listen_addresses", &listen);
    set("port", &cfg.port.to_string());
    set("unix_socket_directories", &socket_dir.to_string_lossy());
    set("unix_socket_permissions", "0700");
    if cfg.ephemeral {
        set("fsync", "off");
        set("full_page_writes", "off");
    }
    for (k, v) in &cfg.settings {
        set(k, v);
    }
    s
}

fn hba_conf(tcp: AuthMethod) -> String {
    let m = tcp.hba_keyword();
    format!(
        "# Written by hearth on every start; edits are overwritten.\n\
         # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
         local   all       all                 trust\n\
         host    all       all   127.0.0.1/32  {m}\n\
         host    all       all   ::1/128       {m}\n"
    )
}

/// SQL identifier quoting: `"` doubled inside double quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// SQL / config-file string literal: `'` doubled (standard_conforming_strings).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn instance_conf_is_socket_only_by_default() {
        let cfg = ClusterConfig::new("/d");
        let s = instance_conf(&cfg, Path::new("/d/pgsock"));
        assert!(s.contains("listen_addresses = ''"));
        assert!(s.contains("unix_socket_directories = '/d/pgsock'"));
        assert!(!s.contains("fsync"));
    }

    #[test]
    fn rejects_bad_settings() {
        let mut cfg = ClusterConfig::new("/d");
        cfg.settings.push(("work_mem\nfsync".into(), "off".into()));
        assert!(matches!(
            validate(&cfg),
            Err(ClusterError::InvalidConfig(_))
        ));
    }

    #[test]
    fn tuning_keeps_durability() {
        assert!(TUNING_CONF.contains("fsync = on"));
        assert!(TUNING_CONF.contains("synchronous_commit = on"));
    }
}
