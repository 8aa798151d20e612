//! Building a shard's monoio runtime: io_uring first, epoll ("legacy") when
//! io_uring cannot be set up (ENOSYS on old kernels, EPERM from
//! `kernel.io_uring_disabled` or a seccomp filter) or when the config asks.

use std::fmt;
use std::io;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::IoDriver;

/// The runtime type every shard runs, whichever driver is underneath.
pub type ShardRuntime = monoio::FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Submission queue depth for io_uring: enough for thousands of sockets with
/// an outstanding read each without the driver having to flush early.
const URING_ENTRIES: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Epoll,
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

/// What was built, and why we fell back if we did.
pub struct BuiltRuntime {
    pub runtime: ShardRuntime,
    pub kind: DriverKind,
    pub fallback_reason: Option<String>,
}

/// Build a runtime for the current thread according to the configured driver.
pub fn build_runtime(pref: IoDriver) -> io::Result<BuiltRuntime> {
    match pref {
        IoDriver::Epoll => Ok(BuiltRuntime {
            runtime: build_epoll()?,
            kind: DriverKind::Epoll,
            fallback_reason: None,
        }),
        IoDriver::IoUring => Ok(BuiltRuntime {
            runtime: build_uring()?,
            kind: DriverKind::IoUring,
            fallback_reason: None,
        }),
        IoDriver::Auto => match build_uring() {
            Ok(runtime) => Ok(BuiltRuntime {
                runtime,
                kind: DriverKind::IoUring,
                fallback_reason: None,
            }),
            Err(e) => Ok(BuiltRuntime {
                runtime: build_epoll()?,
                kind: DriverKind::Epoll,
                fallback_reason: Some(e.to_string()),
            }),
        },
    }
}

fn build_uring() -> io::Result<ShardRuntime> {
    let rt = RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()?;
    Ok(rt.into())
}

fn build_epoll() -> io::Result<ShardRuntime> {
    let rt = RuntimeBuilder::<LegacyDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()?;
    Ok(rt.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_runtime_runs_a_timer() {
        let mut built = build_runtime(IoDriver::Epoll).unwrap();
        assert_eq!(built.kind, DriverKind::Epoll);
        built.runtime.block_on(async {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        });
    }

    #[test]
    fn auto_runtime_builds_one_or_the_other() {
        let mut built = build_runtime(IoDriver::Auto).unwrap();
        let v = built.runtime.block_on(async { 7 });
        assert_eq!(v, 7);
    }
}
