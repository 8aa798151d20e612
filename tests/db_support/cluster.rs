//! A throwaway PostgreSQL cluster per test binary — a stand-in until the
//! shared harness `hearth::db::testing::TestCluster` (helper "pg") lands;
//! it mirrors its planned API (`TestCluster::shared()`,
//! `fresh_database()`) so swapping is a one-line change.
//!
//! Runs initdb/pg_ctl as the `postgres` user when we are root (PostgreSQL
//! refuses to run as root), trust auth for the admin user, and pg_hba lines
//! that put the `hearth_password`/`hearth_md5`/`hearth_scram` roles on
//! those methods for the auth tests. Stopped at process exit.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use hearth::db::{ConnectConfig, Host};

pub struct TestCluster {
    pub dir: PathBuf,
    pub port: u16,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join(name).exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .map(|p| p.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL tool, as `postgres` if we are root.
fn run_pg(tool: &str, args: &[&str]) {
    let bin = pg_bin(tool);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

extern "C" fn stop_cluster() {
    if let Some(c) = CLUSTER.get() {
        let data = c.dir.join("data");
        let _ = std::panic::catch_unwind(|| {
            run_pg(
                "pg_ctl",
                &[
                    "-D",
                    &data.to_string_lossy(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            )
        });
        let _ = std::fs::remove_dir_all(&c.dir);
    }
}

fn chown_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let name = std::ffi::CString::new("postgres").expect("static name");
    // SAFETY: getpwnam with a valid C string; the result is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "no `postgres` system user");
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown cluster dir");
}

impl TestCluster {
    /// The cluster of this test binary, started on first use.
    pub fn shared() -> &'static TestCluster {
        CLUSTER.get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("hearth-db-test-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create cluster dir");
            chown_postgres(&dir);
            let data = dir.join("data");
            let data_s = data.to_string_lossy().into_owned();
            run_pg(
                "initdb",
                &[
                    "-D",
                    &data_s,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            );
            let hba = data.join("pg_hba.conf");
            let orig = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
            let lines = "host all hearth_password 127.0.0.1/32 password\n\
                         host all hearth_md5 127.0.0.1/32 md5\n\
                         host all hearth_scram 127.0.0.1/32 scram-sha-256\n";
            std::fs::write(&hba, format!("{lines}{orig}")).expect("write pg_hba.conf");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
                dir.display()
            );
            let log = dir.join("log").to_string_lossy().into_owned();
            run_pg(
                "pg_ctl",
                &["-D", &data_s, "-l", &log, "-o", &opts, "-w", "start"],
            );
            // SAFETY: registering a plain extern "C" fn with atexit.
            unsafe { libc::atexit(stop_cluster) };
            TestCluster { dir, port }
        })
    }

    /// Admin (trust) config for the `postgres` database over TCP.
    pub fn admin_config(&self) -> ConnectConfig {
        ConnectConfig {
            host: Host::Tcp("127.0.0.1".into()),
            port: self.port,
            user: "postgres".into(),
            password: None,
            dbname: "postgres".into(),
            ..ConnectConfig::default()
        }
    }

    /// The directory holding the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }
}
