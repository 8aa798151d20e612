//! Server resource figures from `/proc`: CPU time of the server's process
//! tree and of its PostgreSQL (counted apart, so a server that runs its own
//! cluster and one that uses a separate cluster compare fairly), and RSS.
//!
//! CPU is `utime + stime` (fields 14–15 of `/proc/PID/stat`, all threads)
//! summed over a process and its descendants, taken at the start and the end
//! of the measured window; processes that appear in between count in full.
//! The root's `cutime + cstime` (reaped children) is included so short-lived
//! backends are not lost.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Which processes to watch.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// The homeserver's main process (its non-postgres descendants count too).
    pub server_pid: Option<u32>,
    /// The postmaster of the PostgreSQL the server uses (its backends count).
    pub pg_pid: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    pub server_cpu_s: f64,
    pub pg_cpu_s: Option<f64>,
    /// Server CPU seconds per 1,000 requests (successful or not).
    pub server_cpu_s_per_1k: f64,
    pub pg_cpu_s_per_1k: Option<f64>,
    /// Highest VmRSS of the server process sampled during the window, MB.
    pub peak_rss_mb: f64,
    /// VmHWM at the end: the process's peak since it started, MB.
    pub hwm_rss_mb: f64,
}

#[derive(Clone, Debug, Default)]
struct ProcStat {
    ppid: u32,
    comm: String,
    ticks: u64,
    child_ticks: u64,
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&s)
}

/// Parses a `/proc/PID/stat` line (the comm may contain spaces and parens).
fn parse_stat(s: &str) -> Option<ProcStat> {
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let f = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcStat {
        ppid: f(4)? as u32,
        comm,
        ticks: f(14)? + f(15)?,
        child_ticks: f(16)? + f(17)?,
    })
}

fn all_procs() -> HashMap<u32, ProcStat> {
    let mut out = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
            if let Some(st) = read_stat(pid) {
                out.insert(pid, st);
            }
        }
    }
    out
}

/// `root` and its descendants; `skip` prunes a subtree (postgres under hearth).
fn tree(procs: &HashMap<u32, ProcStat>, root: u32, skip: &dyn Fn(&ProcStat) -> bool) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        for (pid, st) in procs {
            if st.ppid == parent && !skip(st) && !out.contains(pid) {
                out.push(*pid);
            }
        }
        i += 1;
    }
    out
}

fn is_pg(st: &ProcStat) -> bool {
    st.comm == "postgres" || st.comm.starts_with("postgres:")
}

/// CPU ticks per pid of the watched trees at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    server: HashMap<u32, u64>,
    pg: HashMap<u32, u64>,
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

impl Watch {
    /// With a server but no postmaster given: a `postgres` child of the
    /// server (hearth's embedded cluster) is its PostgreSQL.
    pub fn discover_pg(&mut self) {
        if self.pg_pid.is_some() {
            return;
        }
        let Some(server) = self.server_pid else {
            return;
        };
        let procs = all_procs();
        let all = tree(&procs, server, &|_| false);
        // The postmaster is the topmost postgres process under the server.
        self.pg_pid = all.into_iter().find(|p| {
            procs
                .get(p)
                .is_some_and(|st| is_pg(st) && procs.get(&st.ppid).is_some_and(|pp| !is_pg(pp)))
        });
    }

    pub fn snapshot(&self) -> Snapshot {
        let procs = all_procs();
        let mut snap = Snapshot::default();
        let ticks = |pids: Vec<u32>, root: u32| -> HashMap<u32, u64> {
            pids.into_iter()
                .filter_map(|p| {
                    let st = procs.get(&p)?;
                    let extra = if p == root { st.child_ticks } else { 0 };
                    Some((p, st.ticks + extra))
                })
                .collect()
        };
        if let Some(s) = self.server_pid {
            snap.server = ticks(tree(&procs, s, &is_pg), s);
        }
        if let Some(pg) = self.pg_pid {
            snap.pg = ticks(tree(&procs, pg, &|_| false), pg);
        }
        snap
    }

    /// VmRSS of the server process in MB (0 when unknown).
    pub fn rss_mb(&self) -> f64 {
        self.status_kb("VmRSS:") / 1024.0
    }

    pub fn hwm_mb(&self) -> f64 {
        self.status_kb("VmHWM:") / 1024.0
    }

    fn status_kb(&self, field: &str) -> f64 {
        let Some(pid) = self.server_pid else {
            return 0.0;
        };
        let path = format!("/proc/{pid}/status");
        read_status_kb(Path::new(&path), field).unwrap_or(0.0)
    }

    /// Figures for the window between two snapshots.
    pub fn resources(
        &self,
        before: &Snapshot,
        after: &Snapshot,
        requests: u64,
        peak_rss_mb: f64,
    ) -> Option<Resources> {
        self.server_pid?;
        let tck = clk_tck();
        let delta = |b: &HashMap<u32, u64>, a: &HashMap<u32, u64>| -> f64 {
            a.iter()
                .map(|(p, t)| t.saturating_sub(b.get(p).copied().unwrap_or(0)))
                .sum::<u64>() as f64
                / tck
        };
        let server_cpu_s = delta(&before.server, &after.server);
        let pg_cpu_s = self.pg_pid.map(|_| delta(&before.pg, &after.pg));
        let per_1k = |cpu: f64| cpu / (requests.max(1) as f64 / 1000.0);
        Some(Resources {
            server_cpu_s,
            pg_cpu_s,
            server_cpu_s_per_1k: per_1k(server_cpu_s),
            pg_cpu_s_per_1k: pg_cpu_s.map(per_1k),
            peak_rss_mb: peak_rss_mb.max(self.rss_mb()),
            hwm_rss_mb: self.hwm_mb(),
        })
    }
}

fn read_status_kb(path: &Path, field: &str) -> Option<f64> {
    let s = std::fs::read_to_string(path).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
}

/// The postmaster pid from a data directory's `postmaster.pid` (first line).
pub fn postmaster_pid(pgdata: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    s.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line = "1234 (post gres: (x)) S 1 2 3 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.comm, "post gres: (x)");
        assert_eq!(st.ppid, 1);
        assert_eq!(st.ticks, 300);
        assert_eq!(st.child_ticks, 10);
    }

    #[test]
    fn measures_own_process() {
        let w = Watch {
            server_pid: Some(std::process::id()),
            pg_pid: None,
        };
        let a = w.snapshot();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let b = w.snapshot();
        let r = w.resources(&a, &b, 2000, 0.0).unwrap();
        assert!(r.server_cpu_s > 0.0, "{r:?}");
        assert!((r.server_cpu_s_per_1k - r.server_cpu_s / 2.0).abs() < 1e-9);
        assert!(r.peak_rss_mb > 0.0 && r.hwm_rss_mb > 0.0);
        assert!(r.pg_cpu_s.is_none());
    }
}
