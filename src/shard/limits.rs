//! Process limits a thread-per-core server leans on, checked once at start.
//!
//! Each connection is a file descriptor, so the open-file limit bounds the
//! connections hearth can hold: the soft limit is raised to the hard one
//! (allowed without privileges) and a warning names what is still too low.
//! `tuning/` explains how to raise them for good.

/// Raise `RLIMIT_NOFILE` to its hard limit; warn if that cannot hold
/// `want_fds`. Returns the soft limit in force afterwards.
pub fn raise_nofile(want_fds: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    // rlim_t is u64 on 64-bit Linux but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let cur = lim.rlim_cur as u64;
    if cur < want_fds {
        tracing::warn!(
            limit = cur,
            wanted = want_fds,
            "open-file limit is below shards × http.max_connections_per_shard; \
             raise it (LimitNOFILE= in systemd, or tuning/tune.sh apply)"
        );
    }
    cur
}

/// Warn when the kernel caps the accept backlog far below what a busy
/// listener wants (`net.core.somaxconn`).
pub fn check_somaxconn(want: u64) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") else {
        return;
    };
    if let Ok(v) = text.trim().parse::<u64>() {
        if v < want {
            tracing::warn!(
                somaxconn = v,
                wanted = want,
                "net.core.somaxconn limits each listener's accept backlog; see tuning/README.md"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_is_raised_to_at_least_what_it_was() {
        let mut before = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut before) };
        let now = raise_nofile(1);
        #[allow(clippy::unnecessary_cast)]
        let was = before.rlim_cur as u64;
        assert!(now >= was);
    }
}
