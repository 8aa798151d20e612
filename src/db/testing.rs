//! Test harness: throwaway PostgreSQL clusters for unit and end-to-end tests.
//!
//! [`TestCluster::shared`] gives each test binary (process) one cluster,
//! started lazily; [`TestCluster::fresh_database`] gives each test its own
//! empty database in it. [`TestCluster::start_with_auth`] starts a separate
//! cluster whose TCP connections require a given auth method.
//!
//! # Cleanup, even when tests fail or the process is killed
//! Three layers, so no cluster or temp dir outlives the test process:
//! 1. `Drop` of a [`TestCluster`] stops the server (immediate mode) and removes
//!    its directory — this also runs while a failing test unwinds.
//! 2. The shared cluster lives in a `static` and is never dropped, so an
//!    `atexit` hook does the same when the test binary exits (libtest calls
//!    `exit`, also when tests failed).
//! 3. If the process is killed (SIGKILL, a CI timeout), no code of ours runs.
//!    So the postmaster is started with `PR_SET_PDEATHSIG = SIGQUIT` (it shuts
//!    down immediately when its parent thread — the long-lived supervisor —
//!    dies), and each cluster has a tiny *reaper* child (`sh`) blocked
//!    reading a pipe whose only write end is ours: when we die the pipe hits
//!    EOF, and the reaper stops any postmaster left and `rm -rf`s the dir.
//!    The reaper ignores SIGINT/SIGHUP so a Ctrl-C on the terminal does not
//!    take it down with us, and its stdio is /dev/null so it never holds a
//!    CI log pipe open.
//!
//! Many test binaries can run at once: every cluster gets its own directory
//! (pid + counter) and a free TCP port chosen by the kernel (retried if
//! another process takes it first). Under root the server runs as the
//! `postgres` user, as in [`crate::db::cluster`].

use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

pub use crate::db::cluster::pg_bin_dir;
use crate::db::cluster::{
    quote_ident, quote_literal, AuthMethod, Cluster, ClusterConfig, ClusterError, ShutdownMode,
};

/// Superuser of test clusters (socket trust; TCP per the cluster's method).
pub const SUPERUSER: &str = "hearth";
/// Password-protected role created in clusters with a non-trust method.
pub const AUTH_ROLE: &str = "hearth_auth";

static SHARED: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static ATEXIT: Once = Once::new();
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Parameters of one test database, for the wire client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDb {
    pub host: IpAddr,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl TestDb {
    /// `postgres://user[:password]@127.0.0.1:PORT/dbname`.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(pw) => format!("{}:{}", self.user, pw),
            None => self.user.clone(),
        };
        format!("postgres://{auth}@{}/{}", self.tcp_addr(), self.dbname)
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// `<socket_dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{}", self.port))
    }
}

/// A throwaway cluster in a temp dir, listening on 127.0.0.1 and a socket.
pub struct TestCluster {
    cluster: Cluster,
    root: PathBuf,
    auth: AuthMethod,
    role: String,
    password: Option<String>,
    reaper: Mutex<Option<(Child, ChildStdin)>>,
    next_db: AtomicU64,
}

impl TestCluster {
    /// The cluster shared by all tests of this process (started on first use).
    ///
    /// Panics if PostgreSQL cannot be started: it is a test fixture, and the
    /// message says what to install.
    pub fn shared() -> &'static TestCluster {
        let res = SHARED.get_or_init(|| {
            let c = TestCluster::start().map_err(|e| e.to_string())?;
            ATEXIT.call_once(|| {
                // SAFETY: registering a plain `extern "C" fn` is always sound.
                unsafe {
                    libc::atexit(cleanup_shared_at_exit);
                }
            });
            Ok(c)
        });
        match res {
            Ok(c) => c,
            Err(e) => panic!("cannot start the shared test PostgreSQL cluster: {e}"),
        }
    }

    /// A private cluster with trust auth (stopped and removed on drop).
    pub fn start() -> Result<TestCluster, ClusterError> {
        Self::start_with_auth(AuthMethod::Trust)
    }

    /// A private cluster whose TCP connections require `method`, with role
    /// [`AUTH_ROLE`] holding a random password (stored with the hash the
    /// method needs). With `Trust`, databases belong to the superuser.
    pub fn start_with_auth(method: AuthMethod) -> Result<TestCluster, ClusterError> {
        let root = make_root()?;
        // From here on, the reaper removes `root` even if we are killed.
        let reaper = spawn_reaper(&root).ok();
        let mut tc = TestCluster {
            // Placeholder replaced below; keeps `root` cleaned on early errors.
            cluster: match start_cluster(&root, method) {
                Ok(c) => c,
                Err(e) => {
                    remove_root(&root, reaper);
                    return Err(e);
                }
            },
            root,
            auth: method,
            role: SUPERUSER.into(),
            password: None,
            reaper: Mutex::new(reaper),
            next_db: AtomicU64::new(0),
        };
        if method != AuthMethod::Trust {
            let pw = random_password();
            tc.cluster.psql(
                "postgres",
                &format!(
                    "SET password_encryption = {}; CREATE ROLE {} LOGIN PASSWORD {}",
                    quote_literal(method.password_encryption()),
                    quote_ident(AUTH_ROLE),
                    quote_literal(&pw)
                ),
            )?;
            tc.role = AUTH_ROLE.into();
            tc.password = Some(pw);
        }
        Ok(tc)
    }

    /// A new, empty database owned by this cluster's login role.
    ///
    /// Panics on failure (test fixture); see [`Self::try_fresh_database`].
    pub fn fresh_database(&self) -> TestDb {
        match self.try_fresh_database() {
            Ok(db) => db,
            Err(e) => panic!("cannot create a test database: {e}"),
        }
    }

    pub fn try_fresh_database(&self) -> Result<TestDb, ClusterError> {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let dbname = format!("test_{n}");
        self.cluster.create_database(&dbname, Some(&self.role))?;
        let info = self.cluster.info();
        Ok(TestDb {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: info.port,
            socket_dir: info.socket_dir.clone(),
            user: self.role.clone(),
            password: self.password.clone(),
            dbname,
        })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The temp directory holding everything of this cluster.
    pub fn root_dir(&self) -> &Path {
        &self.root
    }

    pub fn port(&self) -> u16 {
        self.cluster.info().port
    }

    pub fn auth(&self) -> AuthMethod {
        self.auth
    }

    /// Runs SQL as the superuser over the socket (see [`Cluster::psql`]).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        self.cluster.psql(dbname, sql)
    }

    /// Stops the server at once and deletes the directory. Idempotent.
    pub fn shutdown(&self) {
        if let Err(e) = self.cluster.stop_with(ShutdownMode::Immediate) {
            tracing::warn!(error = %e, "stopping test cluster failed");
        }
        let reaper = match self.reaper.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        remove_root(&self.root, reaper);
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

extern "C" fn cleanup_shared_at_exit() {
    // Unwinding out of an `extern "C"` fn aborts; swallow any panic here.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(c)) = SHARED.get() {
            c.shutdown();
        }
    });
}

fn start_cluster(root: &Path, method: AuthMethod) -> Result<Cluster, ClusterError> {
    // The free port may be taken by another process before postgres binds
    // it; then start again on another one (initdb is not repeated).
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = free_port()?;
        let mut cfg = ClusterConfig::new(root);
        cfg.port = port;
        cfg.listen_tcp = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        cfg.tcp_auth = method;
        cfg.superuser = SUPERUSER.into();
        cfg.ephemeral = true;
        cfg.on_parent_death = ShutdownMode::Immediate;
        cfg.start_timeout = Duration::from_secs(60);
        cfg.stop_timeout = Duration::from_secs(10);
        // Small footprint: many test binaries run clusters side by side.
        for (k, v) in [
            ("shared_buffers", "32MB"),
            ("max_connections", "100"),
            ("min_wal_size", "32MB"),
            ("max_wal_size", "256MB"),
            ("log_min_duration_statement", "-1"),
        ] {
            cfg.settings.push((k.into(), v.into()));
        }
        match Cluster::ensure(cfg) {
            Err(ClusterError::StartFailed { .. }) if attempt < 5 => continue,
            other => return other,
        }
    }
}

fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| ClusterError::io("finding a free port", e))?;
    let port = l
        .local_addr()
        .map_err(|e| ClusterError::io("finding a free port", e))?
        .port();
    Ok(port)
}

/// A fresh directory, short enough for unix socket paths (≤ 107 bytes).
fn make_root() -> Result<PathBuf, ClusterError> {
    let tmp = std::env::temp_dir();
    // A long TMPDIR would push the socket path over the limit.
    let base = if tmp.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        tmp
    };
    let pid = std::process::id();
    loop {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("hearth-pg-{pid}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                // Traversable by the `postgres` user when we are root.
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                    .map_err(|e| ClusterError::io(format!("chmod {}", dir.display()), e))?;
                return Ok(dir);
            }
            // Left over from an earlier process with the same pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ClusterError::io(format!("creating {}", dir.display()), e)),
        }
    }
}

/// The reaper: waits for EOF on its stdin (we died or closed it), then
/// stops a leftover postmaster of this cluster and removes the directory.
const REAPER_SCRIPT: &str = r#"
trap '' INT HUP
while read -r _; do :; done
pf="$1/postgres/postmaster.pid"
if [ -f "$pf" ]; then
  pid=$(head -n 1 "$pf")
  case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
    */postgres)
      kill -QUIT "$pid" 2>/dev/null
      i=0
      # Until it is gone or a zombie (state Z) that a slow init has yet to reap.
      while [ "$i" -lt 100 ] && [ -r "/proc/$pid/stat" ] \
        && ! sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | grep -q '^Z'; do
        sleep 0.1; i=$((i+1))
      done ;;
  esac
fi
rm -rf "$1"
"#;

fn spawn_reaper(root: &Path) -> std::io::Result<(Child, ChildStdin)> {
    let mut child = Command::new("/bin/sh")
        .args(["-c", REAPER_SCRIPT, "hearth-pg-reaper"])
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    match child.stdin.take() {
        Some(stdin) => Ok((child, stdin)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(std::io::Error::other("reaper has no stdin"))
        }
    }
}

fn remove_root(root: &Path, reaper: Option<(Child, ChildStdin)>) {
    if let Err(e) = std::fs::remove_dir_all(root) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %root.display(), error = %e, "removing test cluster dir failed");
        }
    }
    if let Some((mut child, mut stdin)) = reaper {
        // Closing the pipe lets the reaper finish (nothing left to do).
        let _ = stdin.flush();
        drop(stdin);
        let _ = child.wait();
    }
}

/// 64 random bits from std's randomly keyed SipHash, as hex.
fn random_password() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("pw{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_format() {
        let db = TestDb {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 5999,
            socket_dir: "/s".into(),
            user: "u".into(),
            password: None,
            dbname: "d".into(),
        };
        assert_eq!(db.url(), "postgres://u@127.0.0.1:5999/d");
        let db = TestDb {
            password: Some("p".into()),
            ..db
        };
        assert_eq!(db.url(), "postgres://u:p@127.0.0.1:5999/d");
        assert_eq!(db.socket_path(), PathBuf::from("/s/.s.PGSQL.5999"));
    }

    #[test]
    fn shared_cluster_gives_distinct_databases() {
        let c = TestCluster::shared();
        let a = c.fresh_database();
        let b = c.fresh_database();
        assert_ne!(a.dbname, b.dbname);
        assert_eq!(c.psql(&a.dbname, "SELECT 1").expect("psql"), "1");
    }
}
