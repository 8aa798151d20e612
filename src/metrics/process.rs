//! Process basics from `/proc/self` (Linux): resident memory, CPU seconds,
//! open and maximum descriptors, threads, start time. The standard
//! `process_*` names, so stock dashboards work.

use super::{Families, Kind};

/// Reads `/proc/self`; call on the blocking pool (file IO). Missing
/// files (another OS, a locked-down `/proc`) just leave families out.
pub fn collect() -> Families {
    let mut f = Families::default();
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let Some(stat) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat(&s))
    {
        if ticks > 0 {
            let cpu = (stat.utime + stat.stime) as f64 / ticks as f64;
            f.scalar(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                Kind::Counter,
                vec![],
                cpu,
            );
            if let Some(btime) = boot_time() {
                f.scalar(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    Kind::Gauge,
                    vec![],
                    btime as f64 + stat.starttime as f64 / ticks as f64,
                );
            }
        }
        f.scalar(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Kind::Gauge,
            vec![],
            stat.vsize as f64,
        );
        if page > 0 {
            f.scalar(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Kind::Gauge,
                vec![],
                (stat.rss * page as u64) as f64,
            );
        }
        f.scalar(
            "process_threads",
            "Number of OS threads in the process.",
            Kind::Gauge,
            vec![],
            stat.threads as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        f.scalar(
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
            vec![],
            dir.count() as f64,
        );
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        f.scalar(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            Kind::Gauge,
            vec![],
            lim.rlim_cur as f64,
        );
    }
    f
}

/// The fields of `/proc/self/stat` used here.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss: u64,
}

/// Fields count from 1 (`pid`); `comm` (2) is parenthesised and may hold
/// spaces or `)`, so counting starts after the last `)` (field 3).
fn parse_stat(s: &str) -> Option<Stat> {
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: get(14)?,
        stime: get(15)?,
        threads: get(20)?,
        starttime: get(22)?,
        vsize: get(23)?,
        rss: get(24)?,
    })
}

fn boot_time() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_comm() {
        let line = "42 (a) b) S 1 2 3 4 5 6 7 8 9 10 100 50 0 0 20 0 7 0 12345 99999 321 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 100,
                stime: 50,
                threads: 7,
                starttime: 12345,
                vsize: 99999,
                rss: 321,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let f = collect();
        let names: Vec<&str> = f.0.iter().map(|f| f.name).collect();
        for n in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
    }
}
