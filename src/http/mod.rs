//! HTTP/1.1 server on monoio (io_uring): parser, connections, router,
//! Matrix errors, CORS.
//!
//! One `serve` runs per shard on that shard's single-threaded runtime; all
//! state is shard-local (`Rc`), nothing here needs `Send`.

mod access;
mod config;
mod conn;
pub mod cors;
mod error;
pub mod handoff;
pub mod parser;
mod request;
mod response;
mod router;
mod server;
mod shutdown;
pub mod tls;

pub use access::redact_query;
pub use config::HttpConfig;
pub use error::{names_unrecognized, MatrixError};
pub use handoff::{adopt, Handoff, Moving};
pub use request::{Headers, Method, Request};
pub use response::{reason, Response};
pub use router::{HandlerResult, Router};
pub use server::{serve, serve_with};
pub use shutdown::Shutdown;
