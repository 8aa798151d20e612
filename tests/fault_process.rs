//! Process faults end to end, each bounded in time: the real binary on its
//! embedded PostgreSQL (the default a new user runs), real sockets.
//!
//! - hearth killed with SIGKILL during sustained sends, four times in a
//!   row: it restarts with no manual step and every event id it answered
//!   with is still there;
//! - PostgreSQL killed (postmaster and backends) under load: requests fail
//!   fast with a Matrix error instead of hanging, and service is back within
//!   5 s of PostgreSQL being ready again;
//! - the data disk full (a small tmpfs data dir): writes fail with an
//!   error, nothing acknowledged is lost, and service resumes once space is
//!   freed.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::faults::{try_request, within};
use common::{call, enc, ok, register_user, Hearth, Opts};
use serde_json::json;

/// Two shards on the embedded cluster in the data dir (no database URL).
fn embedded() -> Opts {
    Opts {
        shards: 2,
        ..Opts::default()
    }
}

/// One send's outcome, as a client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    started: Instant,
    took: Duration,
    /// HTTP status, or `None` when no response came (connection refused or
    /// dropped: the process is dead).
    status: Option<u16>,
    /// The errcode of an error answer.
    errcode: Option<String>,
    /// The event id of a 200.
    event_id: Option<String>,
}

/// Sends from `threads` clients, round-robin over `rooms`, until `stop`.
/// Every outcome is recorded with the room it was for.
fn sustained_sends(
    addr: SocketAddr,
    token: &str,
    rooms: &[String],
    tag: &str,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<(String, Outcome)>>> {
    (0..threads)
        .map(|t| {
            let (token, rooms, tag, stop) = (
                token.to_owned(),
                rooms.to_vec(),
                tag.to_owned(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let room = &rooms[(t + n) % rooms.len()];
                    let path = format!(
                        "/_matrix/client/v3/rooms/{}/send/m.room.message/{tag}-{t}-{n}",
                        enc(room)
                    );
                    let body = json!({"msgtype": "m.text", "body": format!("{tag} {t} {n}")});
                    let started = Instant::now();
                    let r = try_request(
                        addr,
                        "PUT",
                        &path,
                        Some(&token),
                        body.to_string().as_bytes(),
                        Duration::from_secs(20),
                    );
                    let took = started.elapsed();
                    let o = match r {
                        Ok(r) => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&r.body).unwrap_or(json!({}));
                            Outcome {
                                started,
                                took,
                                status: Some(r.status),
                                errcode: v["errcode"].as_str().map(str::to_owned),
                                event_id: (r.status == 200)
                                    .then(|| v["event_id"].as_str().map(str::to_owned))
                                    .flatten(),
                            }
                        }
                        Err(_) => {
                            // Dead or restarting: don't spin.
                            std::thread::sleep(Duration::from_millis(20));
                            Outcome {
                                started,
                                took,
                                status: None,
                                errcode: None,
                                event_id: None,
                            }
                        }
                    };
                    out.push((room.clone(), o));
                    n += 1;
                }
                out
            })
        })
        .collect()
}

fn join_all(hs: Vec<std::thread::JoinHandle<Vec<(String, Outcome)>>>) -> Vec<(String, Outcome)> {
    hs.into_iter()
        .flat_map(|h| h.join().expect("sender thread"))
        .collect()
}

/// Every acknowledged event is readable (`/rooms/{id}/event/{eventId}`).
fn assert_all_present(h: &Hearth, token: &str, acked: &[(String, String)]) {
    let mut missing = Vec::new();
    for (room, id) in acked {
        let r = call(
            h,
            "GET",
            &format!("/rooms/{}/event/{}", enc(room), enc(id)),
            token,
            None,
        );
        if r.status != 200 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

fn acked_of(outcomes: &[(String, Outcome)]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .filter_map(|(room, o)| Some((room.clone(), o.event_id.clone()?)))
        .collect()
}

fn user_with_rooms(h: &Hearth, name: &str, rooms: usize) -> (String, Vec<String>) {
    let u = register_user(h, name);
    let ids = (0..rooms)
        .map(|_| {
            ok(call(h, "POST", "/createRoom", &u.token, Some(json!({}))))["room_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    (u.token, ids)
}

fn restart(h: &mut Hearth, opts: Opts) {
    let dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    *h = Hearth::start_in(opts, dir);
}

#[test]
fn kill_9_four_times_during_sustained_sends_loses_nothing_acknowledged() {
    within(Duration::from_secs(420), &[], || {
        let mut h = Hearth::start(embedded());
        let (token, rooms) = user_with_rooms(&h, "survivor", 2);
        let mut acked = Vec::new();
        for round in 0..4 {
            let stop = Arc::new(AtomicBool::new(false));
            let senders = sustained_sends(
                h.addr,
                &token,
                &rooms,
                &format!("r{round}"),
                4,
                stop.clone(),
            );
            // A different moment in the write path each round.
            std::thread::sleep(Duration::from_millis(1200 + 300 * round));
            h.signal(libc::SIGKILL);
            assert!(
                h.wait_exit(Duration::from_secs(30)).is_none(),
                "killed, not exited"
            );
            stop.store(true, Ordering::Relaxed);
            let got = acked_of(&join_all(senders));
            assert!(
                got.len() >= 20,
                "round {round}: only {} sends acknowledged",
                got.len()
            );
            acked.extend(got);
            // No manual step: the same command on the same data dir, with
            // whatever the kill left behind (postmaster.pid, a postmaster
            // still shutting down, a half-written WAL record).
            let t = Instant::now();
            restart(&mut h, embedded());
            eprintln!(
                "round {round}: restarted in {:?}, {} acknowledged so far",
                t.elapsed(),
                acked.len()
            );
        }
        // Acknowledged before each kill, present after all of them; and
        // the server still takes writes.
        assert_all_present(&h, &token, &acked);
        ok(call(
            &h,
            "PUT",
            &format!("/rooms/{}/send/m.room.message/after", enc(&rooms[0])),
            &token,
            Some(json!({"msgtype": "m.text", "body": "after"})),
        ));
    });
}

/// `postmaster.pid` of the embedded cluster under `dir`.
fn postmaster_pid_file(dir: &Path) -> PathBuf {
    fn find(dir: &Path, depth: usize) -> Option<PathBuf> {
        let p = dir.join("postmaster.pid");
        if p.exists() {
            return Some(p);
        }
        if depth == 0 {
            return None;
        }
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .find_map(|e| find(&e.path(), depth - 1))
    }
    find(dir, 4).expect("postmaster.pid under the data dir")
}

/// The postmaster's pid and whether it says it is ready (PostgreSQL writes
/// its status on the 8th line of `postmaster.pid`).
fn postmaster_state(pid_file: &Path) -> Option<(i32, bool)> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let ready = text.lines().nth(7).is_some_and(|l| l.trim() == "ready");
    Some((pid, ready))
}

#[test]
fn postgres_killed_under_load_fails_fast_and_is_back_within_5s() {
    within(Duration::from_secs(240), &[], || {
        let h = Hearth::start(embedded());
        let (token, rooms) = user_with_rooms(&h, "steady", 2);
        let pid_file = postmaster_pid_file(h.data_dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let senders = sustained_sends(h.addr, &token, &rooms, "pg", 4, stop.clone());
        std::thread::sleep(Duration::from_secs(1));
        let (old, ready) = postmaster_state(&pid_file).expect("postmaster.pid");
        assert!(ready);
        // The postmaster runs in its own process group: kill it and every
        // backend at once, as the OOM killer or `pkill -9 postgres` would.
        let killed_at = Instant::now();
        // SAFETY: kill(2) on the process group of our own child's child.
        assert_eq!(unsafe { libc::kill(-old, libc::SIGKILL) }, 0);
        // hearth's cluster supervisor restarts it; note when it is ready.
        let ready_at = loop {
            match postmaster_state(&pid_file) {
                Some((pid, true)) if pid != old => break Instant::now(),
                _ => {}
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "PostgreSQL was never restarted"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        std::thread::sleep(Duration::from_secs(8));
        stop.store(true, Ordering::Relaxed);
        let outcomes = join_all(senders);
        eprintln!(
            "PostgreSQL down for {:?}; {} sends",
            ready_at - killed_at,
            outcomes.len()
        );

        // Every request got an answer (no dropped connection), fast.
        let mut by_status: HashMap<Option<u16>, usize> = HashMap::new();
        for (_, o) in &outcomes {
            *by_status.entry(o.status).or_default() += 1;
            assert!(o.status.is_some(), "a request got no answer: {o:?}");
            assert!(
                o.took < Duration::from_secs(3),
                "a request hung for {:?} instead of failing fast: {o:?}",
                o.took
            );
            if o.status != Some(200) {
                assert!(
                    o.status >= Some(500) && o.errcode.is_some(),
                    "a failure is a Matrix error: {o:?}"
                );
            }
        }
        let slowest = outcomes
            .iter()
            .map(|(_, o)| o.took)
            .max()
            .unwrap_or_default();
        eprintln!("outcomes by status: {by_status:?}; slowest answer {slowest:?}");
        let failed_during = outcomes
            .iter()
            .filter(|(_, o)| o.status != Some(200) && o.started + o.took >= killed_at)
            .count();
        assert!(failed_during > 0, "the outage was not seen: {by_status:?}");
        // Back within 5 s of PostgreSQL: everything sent from then on works.
        let after: Vec<_> = outcomes
            .iter()
            .filter(|(_, o)| o.started >= ready_at + Duration::from_secs(5))
            .collect();
        assert!(
            after.len() >= 10,
            "too few sends after recovery: {}",
            after.len()
        );
        for (_, o) in &after {
            assert_eq!(o.status, Some(200), "not back 5 s after PostgreSQL: {o:?}");
        }
        let first_ok = outcomes
            .iter()
            .filter(|(_, o)| o.status == Some(200) && o.started >= ready_at)
            .map(|(_, o)| o.started + o.took)
            .min()
            .expect("a send after recovery");
        eprintln!("service back {:?} after PostgreSQL", first_ok - ready_at);
        assert_all_present(&h, &token, &acked_of(&outcomes));
    });
}

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the disk-full test mounts a tmpfs and needs root (CI runs as root)"
        );
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs failed");
        Tmpfs { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            let _ = std::process::Command::new("umount")
                .args(["-l"])
                .arg(d.path())
                .status();
            let _ = d.close();
        }
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = f.sync_all();
    written
}

#[test]
fn a_full_data_disk_fails_writes_loses_nothing_and_recovers_when_freed() {
    let disk = Tmpfs::mount("320m");
    let data = tempfile::Builder::new()
        .prefix("hearth-data")
        .tempdir_in(disk.path())
        .unwrap();
    let filler = disk.path().join("filler");
    within(Duration::from_secs(300), &[], move || {
        let h = Hearth::start_in(embedded(), data);
        let (token, rooms) = user_with_rooms(&h, "filler", 2);
        let stop = Arc::new(AtomicBool::new(false));
        let senders = sustained_sends(h.addr, &token, &rooms, "full", 2, stop.clone());
        std::thread::sleep(Duration::from_millis(500));
        let filled_at = Instant::now();
        let bytes = fill(&filler);
        eprintln!("disk filled with {} MiB", bytes >> 20);
        // Keep writing until the full disk shows (a heap or WAL file must
        // grow), then a little longer.
        let mut seen_full = None;
        while seen_full.is_none() && filled_at.elapsed() < Duration::from_secs(90) {
            std::thread::sleep(Duration::from_millis(200));
            let out = call(
                &h,
                "PUT",
                &format!(
                    "/rooms/{}/send/m.room.message/probe-{}",
                    enc(&rooms[0]),
                    filled_at.elapsed().as_millis()
                ),
                &token,
                Some(json!({"msgtype": "m.text", "body": "probe"})),
            );
            if out.status != 200 {
                seen_full = Some((out.status, out.json()["errcode"].clone()));
            }
        }
        let (status, errcode) = seen_full.expect("writes never failed on a full disk");
        assert!(status >= 500 && errcode.is_string(), "{status} {errcode}");
        std::thread::sleep(Duration::from_secs(2));
        // Free the space: service resumes with no restart of hearth.
        std::fs::remove_file(&filler).unwrap();
        let freed_at = Instant::now();
        let resumed = loop {
            let r = try_request(
                h.addr,
                "PUT",
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/resume-{}",
                    enc(&rooms[1]),
                    freed_at.elapsed().as_millis()
                ),
                Some(&token),
                br#"{"msgtype":"m.text","body":"resumed"}"#,
                Duration::from_secs(20),
            );
            if r.is_ok_and(|r| r.status == 200) {
                break freed_at.elapsed();
            }
            assert!(
                freed_at.elapsed() < Duration::from_secs(90),
                "service did not resume after space was freed"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        eprintln!("writes resumed {resumed:?} after space was freed");
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let outcomes = join_all(senders);
        for (_, o) in &outcomes {
            // Failing, not hanging, and never a dropped connection.
            assert!(o.status.is_some(), "a request got no answer: {o:?}");
            assert!(o.took < Duration::from_secs(20), "{o:?}");
            if o.status != Some(200) {
                assert!(o.errcode.is_some(), "a failure is a Matrix error: {o:?}");
            }
        }
        let failed = outcomes
            .iter()
            .filter(|(_, o)| o.status != Some(200))
            .count();
        eprintln!("{} sends, {failed} failed while full", outcomes.len());
        assert_all_present(&h, &token, &acked_of(&outcomes));
    });
    drop(disk);
}
