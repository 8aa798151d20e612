//! Server-server (federation) API endpoints (`/_matrix/federation/...`,
//! `/_matrix/key/...`) go here, registered on the router served by
//! `kind = "federation"` listeners.

use crate::http::{Method, Router};
use crate::shard_state::ShardState;

/// Routes served on `kind = "federation"` listeners.
pub fn federation_router() -> Router<ShardState> {
    Router::new().route(Method::Get, "/health", super::client::versions::health)
}
