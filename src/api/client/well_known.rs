//! `/.well-known/matrix/server` (server-server "Resolving server names":
//! delegation) and `/.well-known/matrix/client` (client-server "Well-known
//! URIs"), answered on client listeners when `[well_known]` configures
//! them, 404 otherwise. Served on the client listener because peers ask
//! `https://<hostname>/` on port 443, where the client side usually is.

use std::rc::Rc;

use serde_json::json;

use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::shard_state::ShardState;

pub fn routes(r: Router<ShardState>) -> Router<ShardState> {
    r.route(Method::Get, "/.well-known/matrix/server", server)
        .route(Method::Get, "/.well-known/matrix/client", client)
}

async fn server(state: Rc<ShardState>, _req: Request) -> HandlerResult {
    match &state.config.well_known.server {
        Some(s) => Ok(Response::json(200, &json!({ "m.server": s }))
            .with_header("Cache-Control", "max-age=86400")),
        None => Err(MatrixError::not_found(
            ".well-known/matrix/server is not configured",
        )),
    }
}

async fn client(state: Rc<ShardState>, _req: Request) -> HandlerResult {
    match &state.config.well_known.client {
        Some(base) => Ok(Response::json(
            200,
            &json!({ "m.homeserver": { "base_url": base } }),
        )),
        None => Err(MatrixError::not_found(
            ".well-known/matrix/client is not configured",
        )),
    }
}
