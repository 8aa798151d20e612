//! Moving a keep-alive connection to another shard between two requests.
//!
//! The kernel's `SO_REUSEPORT` hash decides which shard accepts a
//! connection, but a user's requests run on the user's shard: a `/sync`
//! served from the wrong shard pays a mesh hop there and back, and every
//! wake-up of a parked long poll pays the return hop. With `n` shards that
//! is most connections. A handler that knows where its connection belongs
//! says so ([`Response::move_to`](super::Response::move_to)); once that
//! response is written, the socket and whatever was already read of the
//! next request are sent to that shard, whose server on the same port
//! adopts them and goes on reading. The client sees one connection
//! throughout.
//!
//! Architecture Invariant: a connection moves only between requests, after
//! every response queued so far has been written, so responses stay in
//! request order; and a move never loses bytes (the unread rest of the
//! read buffer travels with the socket). Only plain TCP moves (a TLS
//! session lives in its rustls state), and at most [`MAX_MOVES`] times, so
//! a connection shared by users of several shards (a proxy's) settles
//! instead of bouncing.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;

use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use monoio::net::TcpStream;

/// Moves one connection may make in its life.
pub const MAX_MOVES: u8 = 2;

/// A connection on its way to another shard. `Send`, to cross the mesh.
#[derive(Debug)]
pub struct Moving {
    pub(crate) fd: OwnedFd,
    pub(crate) peer: SocketAddr,
    /// The listening port: the target adopts it into its server there.
    pub(crate) port: u16,
    /// Bytes already read of the requests after the one just answered.
    pub(crate) read: BytesMut,
    /// Moves made so far, this one included.
    pub(crate) moves: u8,
}

/// How connections travel between shards. The HTTP layer knows no mesh;
/// whoever runs the shards supplies this to [`serve_with`](super::serve_with).
pub trait Handoff {
    /// The shard this server runs on.
    fn here(&self) -> usize;
    /// Delivers `conn` to `shard`, which must pass it to [`adopt`]. `false`:
    /// it could not be sent (shutting down); the connection is closed.
    fn send(&self, shard: usize, conn: Moving) -> LocalBoxFuture<'static, bool>;
}

pub(crate) type Adopter = Rc<dyn Fn(Moving)>;

thread_local! {
    /// This thread's servers that take moved connections, by port.
    static ADOPTERS: RefCell<Vec<(u16, Adopter)>> = const { RefCell::new(Vec::new()) };
}

/// Takes over a connection moved here: this thread's server on its port
/// serves it from where it stopped. With no such server (it has shut
/// down) the connection is closed, as an idle keep-alive one may be.
pub fn adopt(conn: Moving) {
    let adopter = ADOPTERS.with(|a| {
        a.borrow()
            .iter()
            .find(|(port, _)| *port == conn.port)
            .map(|(_, f)| Rc::clone(f))
    });
    if let Some(adopter) = adopter {
        adopter(conn);
    }
}

/// Keeps a server registered as the adopter of its port until dropped.
pub(crate) struct Registration(u16);

pub(crate) fn register(port: u16, f: Adopter) -> Registration {
    ADOPTERS.with(|a| a.borrow_mut().push((port, f)));
    Registration(port)
}

impl Drop for Registration {
    fn drop(&mut self) {
        ADOPTERS.with(|a| a.borrow_mut().retain(|(p, _)| *p != self.0));
    }
}

/// A stream that can leave its runtime as a plain socket.
pub(crate) trait Detach: Sized {
    /// The socket, off this runtime; `Err(self)` if it cannot move.
    fn detach(self) -> Result<OwnedFd, Self> {
        Err(self)
    }
}

impl Detach for TcpStream {
    /// A duplicate of the descriptor, then this stream dropped: the
    /// runtime closes its own descriptor (under io_uring asynchronously)
    /// while the duplicate keeps the socket open. Unlike `into_raw_fd`,
    /// this cannot panic on an operation still holding the descriptor.
    fn detach(self) -> Result<OwnedFd, Self> {
        // SAFETY: the descriptor is open for as long as `self` lives.
        let fd = unsafe { BorrowedFd::borrow_raw(self.as_raw_fd()) };
        match fd.try_clone_to_owned() {
            Ok(owned) => Ok(owned),
            Err(_) => Err(self),
        }
    }
}

impl<IO> Detach for monoio_rustls::ServerTlsStream<IO> {}
