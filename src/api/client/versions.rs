//! `GET /_matrix/client/versions` (client-server API, "Server discovery" →
//! "API Versions") and `GET /health`.

use std::rc::Rc;
use std::sync::OnceLock;

use bytes::Bytes;

use crate::http::{HandlerResult, Request, Response};
use crate::shard_state::ShardState;

/// The spec versions hearth targets, as Synapse lists them: clients pick the
/// newest they share with us. v1.11 and v1.12 hold since authenticated
/// media (`/_matrix/client/v1/media/*`, `api/client/media.rs`) is served.
pub const SPEC_VERSIONS: &[&str] = &[
    "r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2",
    "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12",
];

/// The body never changes, so it is serialised once per process and every
/// response shares the same `Bytes` (a refcount bump, no allocation).
fn versions_body() -> Bytes {
    static BODY: OnceLock<Bytes> = OnceLock::new();
    BODY.get_or_init(|| {
        let v = serde_json::json!({ "versions": SPEC_VERSIONS, "unstable_features": {} });
        Bytes::from(v.to_string())
    })
    .clone()
}

pub async fn versions(_state: Rc<ShardState>, _req: Request) -> HandlerResult {
    Ok(Response::json_bytes(200, versions_body()))
}

/// Liveness: the shard answering is alive. Plain text, like Synapse's `/health`.
pub async fn health(_state: Rc<ShardState>, _req: Request) -> HandlerResult {
    Ok(Response::bytes(
        200,
        "text/plain",
        Bytes::from_static(b"OK"),
    ))
}
