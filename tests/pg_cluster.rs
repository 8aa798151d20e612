//! End-to-end tests of the embedded cluster and the test harness against a
//! real PostgreSQL (no mocks). Connectivity is checked with `psql` from the
//! cluster's own bin dir.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hearth::db::cluster::{AuthMethod, Cluster, ClusterConfig, ClusterError, ShutdownMode};
use hearth::db::testing::{TestCluster, AUTH_ROLE};

/// A temp dir the `postgres` user can pass through when we run as root.
fn tmp() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hpgt")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    dir
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Running and not a zombie (an orphan's zombie waits for PID 1 to reap it).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// `psql` over TCP with a password, the way a remote client would connect.
fn psql_tcp(
    c: &TestCluster,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> Result<String, String> {
    let mut cmd = Command::new(c.cluster().bin_dir().join("psql"));
    cmd.args(["-X", "-A", "-t", "-w", "-h", "127.0.0.1"])
        .args([
            "-p",
            &c.port().to_string(),
            "-U",
            user,
            "-d",
            db,
            "-c",
            "SELECT 42",
        ])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null());
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn embedded_cfg(data_dir: &Path) -> ClusterConfig {
    let mut cfg = ClusterConfig::new(data_dir);
    // Keep parallel test clusters small; everything else is the real tuning.
    cfg.settings.push(("shared_buffers".into(), "32MB".into()));
    cfg
}

#[test]
fn embedded_first_start_restart_and_clean_stop() {
    let tmp = tmp();
    let data = tmp.path().join("data");
    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("first start");
    assert!(data.join("postgres/PG_VERSION").exists(), "initdb ran");
    let info = cluster.info().clone();
    assert_eq!(info.user, "hearth");
    assert_eq!(info.dbname, "hearth");
    assert_eq!(info.tcp, None);
    assert!(
        info.socket_path().exists(),
        "socket at {:?}",
        info.socket_path()
    );

    // Tuning applied, durability kept, socket only.
    assert_eq!(
        cluster.psql("hearth", "SHOW synchronous_commit").unwrap(),
        "on"
    );
    assert_eq!(cluster.psql("hearth", "SHOW fsync").unwrap(), "on");
    assert_eq!(cluster.psql("hearth", "SHOW jit").unwrap(), "off");
    assert_eq!(cluster.psql("hearth", "SHOW listen_addresses").unwrap(), "");
    assert_eq!(
        cluster.psql("hearth", "SHOW shared_buffers").unwrap(),
        "32MB"
    );
    cluster
        .psql(
            "hearth",
            "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
        )
        .unwrap();

    let pid = cluster.postmaster_pid().expect("running");
    cluster.stop().expect("stop");
    assert!(
        wait_until(Duration::from_secs(5), || !alive(pid)),
        "postmaster gone"
    );
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "clean shutdown removes the pid file"
    );
    assert!(matches!(
        cluster.wait_ready(Duration::from_millis(10)),
        Err(ClusterError::Stopped)
    ));
    assert_eq!(cluster.postmaster_pid(), None);
    cluster.stop().expect("stop is idempotent");
    drop(cluster);

    // Second start on the existing cluster: no initdb, data survives.
    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("restart on existing dir");
    assert_eq!(cluster.psql("hearth", "SELECT x FROM kept").unwrap(), "7");
    let conf = std::fs::read_to_string(data.join("postgres/postgresql.conf")).unwrap();
    assert_eq!(
        conf.matches("include 'hearth-tuning.conf'").count(),
        1,
        "include added once"
    );
}

#[test]
fn tuning_file_starts_unchanged() {
    // The shipped tuning must start as is (CI: 2 cores) and be in effect.
    let tmp = tmp();
    let cluster = Cluster::ensure(ClusterConfig::new(tmp.path().join("data"))).expect("start");
    for (name, want) in [
        ("shared_buffers", "256MB"),
        ("max_connections", "200"),
        ("commit_delay", "20"),
        ("random_page_cost", "1.1"),
        ("huge_pages", "try"),
        ("jit", "off"),
        ("autovacuum_vacuum_insert_scale_factor", "0.05"),
        ("lc_collate", "C"),
        ("server_encoding", "UTF8"),
        ("data_checksums", "on"),
    ] {
        assert_eq!(
            cluster.psql("hearth", &format!("SHOW {name}")).unwrap(),
            want,
            "{name}"
        );
    }
}

#[test]
fn stale_pid_files_are_handled() {
    let tmp = tmp();
    let data = tmp.path().join("data");
    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("first start");
    let pid_file = cluster.pgdata().join("postmaster.pid");
    cluster.stop_with(ShutdownMode::Fast).unwrap();
    drop(cluster);

    // A pid file naming a live, unrelated process (pid reused after a crash):
    // PostgreSQL alone would refuse to start.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let content = format!(
        "{}\n{}\n1700000000\n5432\n{}\n\n  0  0\nready   \n",
        sleeper.id(),
        data.join("postgres").display(),
        data.join("pgsock").display()
    );
    std::fs::write(&pid_file, &content).unwrap();
    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("start over a reused-pid lock file");
    assert_eq!(cluster.psql("hearth", "SELECT 1").unwrap(), "1");
    cluster.stop().unwrap();
    drop(cluster);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // A pid file naming a dead process (plain crash).
    std::fs::write(
        &pid_file,
        content.replacen(&sleeper.id().to_string(), "999999", 1),
    )
    .unwrap();
    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("start over a dead-pid lock file");
    assert_eq!(cluster.psql("hearth", "SELECT 1").unwrap(), "1");
}

#[test]
fn orphaned_postmaster_of_ours_is_replaced() {
    // A postmaster left running by a killed hearth is not our child, so it
    // cannot be supervised: ensure() shuts it down and starts its own.
    let tmp = tmp();
    let data = tmp.path().join("data");
    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("first start");
    let pgdata = cluster.pgdata().to_path_buf();
    let postgres = cluster.bin_dir().join("postgres");
    cluster.stop().unwrap();
    drop(cluster);

    let mut cmd = Command::new(postgres);
    cmd.arg("-D").arg(&pgdata).current_dir("/");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::process::CommandExt;
        let meta = std::fs::metadata(&pgdata).unwrap();
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let mut orphan = cmd.spawn().expect("spawn orphan postmaster");
    let pid_file = pgdata.join("postmaster.pid");
    assert!(wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.contains("ready"))
    }));

    let cluster = Cluster::ensure(embedded_cfg(&data)).expect("start over an orphan");
    assert_ne!(cluster.postmaster_pid(), Some(orphan.id()));
    assert!(orphan.try_wait().unwrap().is_some(), "orphan was shut down");
    assert_eq!(cluster.psql("hearth", "SELECT 1").unwrap(), "1");
}

#[test]
fn supervisor_restarts_a_killed_postmaster() {
    let tmp = tmp();
    let cluster = Cluster::ensure(embedded_cfg(&tmp.path().join("data"))).expect("start");
    let first = cluster.postmaster_pid().expect("running");
    // SAFETY: killing the postmaster we started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(60), || cluster.restarts() >= 1),
        "supervisor restarted it; log:\n{}",
        std::fs::read_to_string(cluster.log_path()).unwrap_or_default()
    );
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("ready again");
    let second = cluster.postmaster_pid().expect("running again");
    assert_ne!(first, second);
    assert_eq!(cluster.psql("hearth", "SELECT 1").unwrap(), "1");
    cluster.stop().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !alive(second)));
}

#[test]
fn clear_errors_for_bad_locations() {
    let tmp = tmp();
    // 107-byte limit on unix socket paths.
    let long = tmp.path().join("d".repeat(100));
    let err = Cluster::ensure(ClusterConfig::new(&long))
        .err()
        .expect("too long");
    assert!(
        matches!(err, ClusterError::SocketPathTooLong { .. }),
        "{err}"
    );

    if is_root() {
        // A root-only parent blocks the postgres user. With a cluster already
        // there (root can see it, postgres cannot): say so, don't fail
        // obscurely, and never start an empty one elsewhere.
        let blocked = tmp.path().join("blocked");
        std::fs::create_dir_all(blocked.join("data/postgres")).unwrap();
        std::fs::set_permissions(&blocked, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut cfg = ClusterConfig::new(blocked.join("data"));
        cfg.relocate_root = tmp.path().join("relocated");
        let err = Cluster::ensure(cfg).err().expect("blocked");
        assert!(matches!(err, ClusterError::NotTraversable { .. }), "{err}");
        assert!(err.to_string().contains("chmod o+x"), "{err}");
        assert!(!tmp.path().join("relocated").exists());
    }
}

/// Root running from a clone in a 0700 home (`/root`): no cluster there yet,
/// so it goes to the relocation root, `data_dir/postgres` links to it, the
/// home keeps its mode, and the next start finds the same cluster.
#[test]
fn root_with_unreachable_data_dir_relocates_the_cluster() {
    if !is_root() {
        return;
    }
    let tmp = tmp();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = home.join("hearth-data");
    let mut cfg = embedded_cfg(&data);
    cfg.relocate_root = tmp.path().join("relocated");
    let cluster = Cluster::ensure(cfg.clone()).expect("relocated cluster starts");
    assert!(cluster.pgdata().starts_with(tmp.path().join("relocated")));
    assert_eq!(
        std::fs::read_link(data.join("postgres")).unwrap(),
        cluster.pgdata()
    );
    cluster.psql("hearth", "CREATE TABLE kept (x int)").unwrap();
    cluster.stop().unwrap();
    drop(cluster);
    let again = Cluster::ensure(cfg).expect("restarts");
    assert_eq!(
        again.psql("hearth", "SELECT count(*) FROM kept").unwrap(),
        "0"
    );
    again.stop().unwrap();
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn shared_cluster_hands_out_distinct_databases() {
    let c = TestCluster::shared();
    assert!(std::ptr::eq(c, TestCluster::shared()), "one per process");
    let a = c.fresh_database();
    let b = c.fresh_database();
    assert_ne!(a.dbname, b.dbname);
    assert_eq!(
        a.url(),
        format!("postgres://hearth@127.0.0.1:{}/{}", c.port(), a.dbname)
    );
    assert!(a.socket_path().exists());
    c.psql(&a.dbname, "CREATE TABLE only_in_a (x int)").unwrap();
    assert_eq!(
        c.psql(
            &b.dbname,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"
        )
        .unwrap(),
        "0"
    );
    // Trust over TCP for the shared cluster.
    assert_eq!(psql_tcp(c, &a.user, None, &a.dbname).unwrap(), "42");
}

#[test]
fn auth_method_clusters_require_their_method() {
    for method in [
        AuthMethod::Md5,
        AuthMethod::ScramSha256,
        AuthMethod::Password,
        AuthMethod::Trust,
    ] {
        let c = TestCluster::start_with_auth(method).expect("auth cluster");
        let db = c.fresh_database();
        assert_eq!(c.auth(), method);
        let hba = std::fs::read_to_string(c.cluster().pgdata().join("pg_hba.conf")).unwrap();
        assert!(
            hba.contains(&format!("127.0.0.1/32  {}", method.hba_keyword())),
            "{hba}"
        );
        if method == AuthMethod::Trust {
            assert_eq!(db.password, None);
            assert_eq!(psql_tcp(&c, &db.user, None, &db.dbname).unwrap(), "42");
            continue;
        }
        assert_eq!(db.user, AUTH_ROLE);
        let pw = db.password.clone().expect("password");
        assert!(db.url().contains(&format!(":{pw}@")));
        assert_eq!(
            psql_tcp(&c, &db.user, Some(&pw), &db.dbname).unwrap(),
            "42",
            "{method:?}"
        );
        let err = psql_tcp(&c, &db.user, Some("wrong"), &db.dbname).expect_err("wrong password");
        assert!(
            err.contains("password authentication failed"),
            "{method:?}: {err}"
        );
        let stored = c
            .psql(
                "postgres",
                &format!(
                    "SELECT left(rolpassword, 3) FROM pg_authid WHERE rolname = '{AUTH_ROLE}'"
                ),
            )
            .unwrap();
        let want = if method == AuthMethod::Md5 {
            "md5"
        } else {
            "SCR"
        };
        assert_eq!(stored, want, "{method:?} password hash");
    }
}

#[test]
fn dropping_a_test_cluster_removes_everything() {
    let c = TestCluster::start().expect("start");
    let root = c.root_dir().to_path_buf();
    let pid = c.cluster().postmaster_pid().unwrap();
    assert!(root.exists());
    drop(c);
    assert!(!root.exists(), "dir removed");
    assert!(!alive(pid), "postmaster stopped");

    // Also when the test using it panics.
    let seen = std::sync::Mutex::new(None::<(PathBuf, u32)>);
    let r = std::panic::catch_unwind(|| {
        let c = TestCluster::start().expect("start");
        *seen.lock().unwrap() = Some((
            c.root_dir().to_path_buf(),
            c.cluster().postmaster_pid().unwrap(),
        ));
        panic!("test failure");
    });
    assert!(r.is_err());
    let (root, pid) = seen.lock().unwrap().clone().unwrap();
    assert!(!root.exists());
    assert!(!alive(pid));
}

const CHILD_ENV: &str = "HEARTH_PG_CLUSTER_KILLED_CHILD";

/// Not a test by itself: the body of the child process that gets SIGKILLed.
#[test]
#[ignore]
fn killed_child_body() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let c = TestCluster::start().expect("start");
    println!(
        "READY {} {}",
        c.root_dir().display(),
        c.cluster().postmaster_pid().unwrap()
    );
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn killed_test_process_leaves_nothing_behind() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_child_body",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Watchdog: a child that never gets ready must not hang this test.
    let child_pid = child.id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done2 = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(120));
        if !done2.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: our own child, not yet reaped (`done` is unset).
            unsafe { libc::kill(child_pid, libc::SIGKILL) };
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (root, pid) = loop {
        let line = lines.next().expect("child output before READY").unwrap();
        // libtest prints "test NAME ... " before our output on the same line.
        if let Some((_, rest)) = line.split_once("READY ") {
            let (root, pid) = rest.rsplit_once(' ').unwrap();
            break (PathBuf::from(root), pid.parse::<u32>().unwrap());
        }
    };
    assert!(root.exists());
    child.kill().unwrap(); // SIGKILL: no destructor, no atexit
    child.wait().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        wait_until(Duration::from_secs(20), || !alive(pid)),
        "postmaster died with us"
    );
    assert!(
        wait_until(Duration::from_secs(20), || !root.exists()),
        "reaper removed {root:?}"
    );
}

/// A start-up failure of the embedded cluster is printed once, not once per
/// error-chain link and again on stderr.
#[test]
fn serve_prints_a_cluster_error_once() {
    let tmp = tmp();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("postgres")).unwrap();
    std::fs::write(data.join("postgres/stray"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HEARTH_SERVER_NAME", "localhost")
        .env("HEARTH_SHARDS", "1")
        .env("HEARTH_DATA_DIR", &data)
        .env("HEARTH_LISTENERS__0__PORT", "0")
        .env("HEARTH_LISTENERS__0__ADDRESS", "127.0.0.1")
        .output()
        .expect("run hearth");
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        all.matches("holds no PostgreSQL cluster").count(),
        1,
        "{all}"
    );
}
