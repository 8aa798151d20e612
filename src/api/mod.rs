//! Client-server and federation endpoints, registered on the HTTP router.

mod versions;

use crate::http::{Method, Router};
use crate::server::ShardState;

/// Routes served on `kind = "client"` listeners.
pub fn client_router() -> Router<ShardState> {
    Router::new()
        .route(Method::Get, "/_matrix/client/versions", versions::versions)
        .route(Method::Get, "/health", versions::health)
}

/// Routes served on `kind = "federation"` listeners.
pub fn federation_router() -> Router<ShardState> {
    Router::new().route(Method::Get, "/health", versions::health)
}
