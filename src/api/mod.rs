//! HTTP endpoints, registered on the routers the listeners serve.
//!
//! `client/` holds the client-server API, `federation/` the server-server
//! API, `admin/` Synapse's admin API (on client listeners); what they
//! share (request helpers) stays here.

pub mod admin;
pub mod client;
pub mod errors;
pub mod federation;
pub mod metrics;
mod util;

pub use client::client_router;
pub use federation::federation_router;
pub use metrics::metrics_router;
