//! The supervisor thread: it spawns the postmaster, notices when it dies and
//! restarts it with backoff, and stops it on request.
//!
//! Why one dedicated thread owns the `Child`: only its owner may reap it, so
//! there is no race between "it exited, pid reused" and "send it a signal".
//! The thread also is the postmaster's *parent thread* for
//! `PR_SET_PDEATHSIG`, which fires when the spawning thread ends — so it must
//! be this long-lived thread, never a short-lived caller (a test thread).

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys::{self, RunAs};
use super::{ClusterError, ShutdownMode};

/// How often the supervisor checks whether the postmaster is still alive.
const POLL: Duration = Duration::from_millis(100);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A postmaster that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// What the supervisor needs to (re)start the postmaster.
pub(super) struct Spec {
    pub bin_dir: PathBuf,
    pub pgdata: PathBuf,
    pub socket_lock: PathBuf,
    pub log_path: PathBuf,
    pub run_as: Option<RunAs>,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
    pub on_parent_death: ShutdownMode,
}

/// State visible to other threads.
#[derive(Default)]
pub(super) struct Shared {
    pid: AtomicI32,
    restarts: AtomicU64,
    /// `Some(true)` ready, `Some(false)` down/starting, `None` stopped for good.
    ready: Mutex<Option<bool>>,
    cv: Condvar,
}

impl Shared {
    pub fn pid(&self) -> Option<u32> {
        u32::try_from(self.pid.load(Ordering::Acquire))
            .ok()
            .filter(|&p| p > 0)
    }

    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Acquire)
    }

    fn set(&self, pid: i32, ready: Option<bool>) {
        self.pid.store(pid, Ordering::Release);
        let mut g = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        *g = ready;
        self.cv.notify_all();
    }

    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match *g {
                Some(true) => return Ok(()),
                None => return Err(ClusterError::Stopped),
                Some(false) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClusterError::NotReady(timeout));
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

enum Cmd {
    Stop(ShutdownMode, Sender<()>),
}

/// Control handle of a running supervisor.
pub(super) struct Handle {
    tx: Sender<Cmd>,
    join: JoinHandle<()>,
}

impl Handle {
    /// Stops the postmaster and ends the thread.
    pub fn stop(self, mode: ShutdownMode) -> Result<(), ClusterError> {
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.tx.send(Cmd::Stop(mode, ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
        self.join.join().map_err(|_| ClusterError::StartFailed {
            reason: "supervisor thread panicked".into(),
            log_tail: String::new(),
        })
    }
}

/// Starts the supervisor; returns once the first start succeeded or failed.
pub(super) fn spawn(spec: Spec, shared: std::sync::Arc<Shared>) -> Result<Handle, ClusterError> {
    let (tx, rx) = mpsc::channel();
    let (first_tx, first_rx) = mpsc::sync_channel(1);
    let join = std::thread::Builder::new()
        .name("pg-supervisor".into())
        .spawn(move || {
            shared.set(0, Some(false));
            match start(&spec) {
                Ok(child) => {
                    shared.set(child.id() as i32, Some(true));
                    let _ = first_tx.send(Ok(()));
                    supervise(&spec, &shared, &rx, child);
                }
                Err(e) => {
                    shared.set(0, None);
                    let _ = first_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| ClusterError::io("spawning the supervisor thread", e))?;
    match first_rx.recv() {
        Ok(Ok(())) => Ok(Handle { tx, join }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err(ClusterError::StartFailed {
            reason: "supervisor thread died".into(),
            log_tail: String::new(),
        }),
    }
}

fn supervise(spec: &Spec, shared: &Shared, rx: &Receiver<Cmd>, mut child: Child) {
    let mut backoff = BACKOFF_MIN;
    let mut up_since = Instant::now();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Cmd::Stop(mode, ack)) => {
                stop_child(spec, &mut child, mode);
                shared.set(0, None);
                let _ = ack.send(());
                return;
            }
            // Every handle is gone without a stop: treat it as a fast stop.
            Err(RecvTimeoutError::Disconnected) => {
                stop_child(spec, &mut child, ShutdownMode::Fast);
                shared.set(0, None);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let status = match child.try_wait() {
            Ok(None) => continue,
            Ok(Some(status)) => status.to_string(),
            Err(e) => format!("wait failed: {e}"),
        };
        tracing::warn!(%status, pid = child.id(), "PostgreSQL postmaster died; restarting");
        shared.set(0, Some(false));
        if up_since.elapsed() > STABLE_AFTER {
            backoff = BACKOFF_MIN;
        }
        // Restart attempts, each after a backoff that a stop can interrupt.
        loop {
            match rx.recv_timeout(backoff) {
                Ok(Cmd::Stop(_, ack)) => {
                    shared.set(0, None);
                    let _ = ack.send(());
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    shared.set(0, None);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match start(spec) {
                Ok(c) => {
                    child = c;
                    up_since = Instant::now();
                    shared.restarts.fetch_add(1, Ordering::AcqRel);
                    shared.set(child.id() as i32, Some(true));
                    tracing::info!(pid = child.id(), "PostgreSQL restarted");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in = ?backoff, "PostgreSQL restart failed");
                }
            }
        }
    }
}

/// Spawns `postgres -D PGDATA` and waits until its pid file says "ready".
fn start(spec: &Spec) -> Result<Child, ClusterError> {
    clear_stale(spec)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_path)
        .map_err(|e| ClusterError::io(format!("opening {}", spec.log_path.display()), e))?;
    let log2 = log
        .try_clone()
        .map_err(|e| ClusterError::io("duplicating the log fd", e))?;
    let mut cmd = sys::pg_command(&spec.bin_dir, "postgres", spec.run_as.as_ref());
    cmd.arg("-D")
        .arg(&spec.pgdata)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Own process group: a terminal's Ctrl-C reaches hearth only, which
        // then stops PostgreSQL in order instead of racing it.
        .process_group(0);
    let parent = std::process::id() as i32;
    let sig = spec.on_parent_death.signal();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe syscalls, without allocating. It runs after std's
    // setuid (which clears the death signal), so the setting sticks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // We were orphaned before prctl took effect: don't start at all.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| ClusterError::io("spawning postgres", e))?;
    match wait_ready(spec, &mut child) {
        Ok(()) => Ok(child),
        Err(e) => {
            stop_child(spec, &mut child, ShutdownMode::Immediate);
            Err(e)
        }
    }
}

fn wait_ready(spec: &Spec, child: &mut Child) -> Result<(), ClusterError> {
    let deadline = Instant::now() + spec.start_timeout;
    let pid_file = spec.pgdata.join("postmaster.pid");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ClusterError::StartFailed {
                reason: format!("postgres exited ({status})"),
                log_tail: log_tail(spec),
            });
        }
        if let Some(pf) = sys::read_pid_file(&pid_file) {
            if pf.pid == child.id() as i32 && pf.status.as_deref() == Some("ready") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(ClusterError::StartFailed {
                reason: format!("not ready within {:?}", spec.start_timeout),
                log_tail: log_tail(spec),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Signals the postmaster and waits; escalates fast → immediate → SIGKILL.
fn stop_child(spec: &Spec, child: &mut Child, mode: ShutdownMode) {
    let pid = child.id() as i32;
    let mut steps = vec![(mode.signal(), spec.stop_timeout)];
    if mode == ShutdownMode::Fast {
        steps.push((libc::SIGQUIT, Duration::from_secs(10)));
    }
    steps.push((libc::SIGKILL, Duration::from_secs(10)));
    for (sig, timeout) in steps {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        sys::signal(pid, sig);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(pid, sig, "PostgreSQL did not stop in time; escalating");
    }
}

/// Handles the lock files a crash leaves behind.
///
/// PostgreSQL itself ignores a `postmaster.pid` whose pid is dead, but not
/// one whose pid was *reused* by an unrelated process (common after a
/// container restart). A live postmaster of ours (orphaned by an earlier,
/// killed hearth) is asked to shut down instead, since we can only supervise
/// a child we spawned.
fn clear_stale(spec: &Spec) -> Result<(), ClusterError> {
    let pid_file = spec.pgdata.join("postmaster.pid");
    if let Some(pf) = sys::read_pid_file(&pid_file) {
        if sys::pid_alive(pf.pid) {
            match sys::is_our_postgres(pf.pid, &spec.bin_dir) {
                Some(true) => stop_orphan(spec, pf.pid)?,
                Some(false) => {
                    tracing::warn!(
                        pid = pf.pid,
                        "stale postmaster.pid names an unrelated process; removing it"
                    );
                    remove(&pid_file)?;
                }
                None => {
                    return Err(ClusterError::AlreadyRunning {
                        pid: pf.pid,
                        data_dir: spec.pgdata.clone(),
                    })
                }
            }
        } else {
            tracing::info!(pid = pf.pid, "removing stale postmaster.pid");
            remove(&pid_file)?;
        }
    }
    if let Some(pf) = sys::read_pid_file(&spec.socket_lock) {
        let live_pg =
            sys::pid_alive(pf.pid) && sys::is_our_postgres(pf.pid, &spec.bin_dir) != Some(false);
        if !live_pg {
            remove(&spec.socket_lock)?;
            // The socket itself is the lock file's name minus ".lock".
            let sock = spec.socket_lock.with_extension("");
            let _ = fs::remove_file(sock);
        }
    }
    Ok(())
}

fn stop_orphan(spec: &Spec, pid: i32) -> Result<(), ClusterError> {
    tracing::warn!(
        pid,
        "an orphaned postmaster of ours still runs; shutting it down"
    );
    for (sig, timeout) in [
        (libc::SIGINT, spec.stop_timeout),
        (libc::SIGQUIT, Duration::from_secs(10)),
    ] {
        sys::signal(pid, sig);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !sys::pid_alive(pid) || sys::is_our_postgres(pid, &spec.bin_dir) == Some(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Err(ClusterError::AlreadyRunning {
        pid,
        data_dir: spec.pgdata.clone(),
    })
}

fn remove(path: &std::path::Path) -> Result<(), ClusterError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClusterError::io(format!("removing {}", path.display()), e)),
    }
}

/// The last lines of the server log, for error messages.
fn log_tail(spec: &Spec) -> String {
    const TAIL: u64 = 2048;
    let Ok(mut f) = fs::File::open(&spec.log_path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
