//! One `SO_REUSEPORT` listening socket per shard per listener, so the kernel
//! spreads incoming connections across shards with no shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog per socket; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// How long a fixed port in use is waited for before giving up. A hearth
/// that just exited can still hold its listening sockets for a moment:
/// io_uring ops (a pending accept) keep their file alive until the ring is
/// torn down, which the kernel finishes asynchronously after the process
/// is gone — on a busy machine long enough for an immediate restart
/// (`systemctl restart`, the bench rig) to fail with "address in use".
/// Found by `bench/scripts/send-profile.sh`, which restarts hearth at once.
pub const BIND_WAIT: Duration = Duration::from_secs(5);

/// Bind `count` sockets to `addr` with `SO_REUSEPORT`. With port 0 the first
/// socket picks the port and the rest join it, so all shards share one port.
///
/// A fixed port already listened on by anyone (another hearth included) is
/// refused with `AddrInUse`: `SO_REUSEPORT` alone would let a second server
/// of the same user join the port and take half its connections.
pub fn bind_reuseport(addr: SocketAddr, count: usize) -> io::Result<Vec<TcpListener>> {
    bind_reuseport_within(addr, count, BIND_WAIT)
}

/// [`bind_reuseport`], waiting at most `wait` for a fixed port in use to
/// be freed (see [`BIND_WAIT`]).
pub fn bind_reuseport_within(
    addr: SocketAddr,
    count: usize,
    wait: Duration,
) -> io::Result<Vec<TcpListener>> {
    if addr.port() != 0 {
        let deadline = Instant::now() + wait;
        let mut logged = false;
        loop {
            match probe_free(addr) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    if !logged {
                        tracing::info!(%addr, "port in use; waiting for it to be freed");
                        logged = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let l = bind_one(addr)?;
        if addr.port() == 0 {
            addr = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

/// Binds (without `SO_REUSEPORT`) and drops a socket: fails if any socket
/// listens on `addr`. `SO_REUSEADDR` keeps connections in TIME_WAIT from a
/// previous run from blocking a restart.
fn probe_free(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_port_is_shared() {
        let ls = bind_reuseport("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
    }

    /// Found by the bench rig: a second server on the same port started
    /// without error and took half the connections.
    #[test]
    fn a_port_in_use_is_refused_even_by_reuseport() {
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        let wait = Duration::from_millis(200);
        let err = bind_reuseport_within(addr, 2, wait).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        drop(first);
        assert!(
            bind_reuseport_within(addr, 2, wait).is_ok(),
            "free again once closed"
        );
    }

    /// A restart while the previous process's sockets are still going away
    /// (see `BIND_WAIT`) waits for them instead of failing.
    #[test]
    fn a_port_freed_soon_is_waited_for() {
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = first[0].local_addr().unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let ls = bind_reuseport_within(addr, 2, Duration::from_secs(5)).unwrap();
        assert_eq!(ls[0].local_addr().unwrap(), addr);
        closer.join().unwrap();
    }
}
