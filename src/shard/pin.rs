//! Pinning shard threads to cores.
//!
//! Shard `i` goes to the `i`-th CPU this process is allowed to run on (its
//! affinity mask, so `taskset`/cgroup cpusets are respected), wrapping round
//! when there are more shards than CPUs.

use std::io;

/// CPUs this process may run on, in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The core shard `shard` is pinned to, given the allowed CPUs.
pub fn core_for_shard(shard: usize, cpus: &[usize]) -> Option<usize> {
    if cpus.is_empty() {
        None
    } else {
        Some(cpus[shard % cpus.len()])
    }
}

/// Pin the calling thread to one CPU.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; the set only names `cpu`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_wrap_round_cpus() {
        assert_eq!(core_for_shard(0, &[2, 3]), Some(2));
        assert_eq!(core_for_shard(3, &[2, 3]), Some(3));
        assert_eq!(core_for_shard(0, &[]), None);
    }

    #[test]
    fn pinning_a_thread_sticks() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        let cpu = *cpus.last().unwrap();
        std::thread::spawn(move || {
            pin_current_thread(cpu).unwrap();
            assert_eq!(allowed_cpus(), vec![cpu]);
        })
        .join()
        .unwrap();
    }
}
