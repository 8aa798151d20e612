//! The metrics listener (`kind = "metrics"`): `GET /metrics` in the
//! Prometheus text format and `GET /health`. Nothing else is served there,
//! and it is not meant to face the internet (the series name the servers
//! this one federates with).

use std::rc::Rc;

use crate::http::{HandlerResult, Method, Request, Response, Router};
use crate::metrics::{collect, encode};
use crate::shard_state::ShardState;

pub fn metrics_router() -> Router<ShardState> {
    Router::new().route(Method::Get, "/metrics", scrape).route(
        Method::Get,
        "/health",
        super::client::versions::health,
    )
}

async fn scrape(state: Rc<ShardState>, _req: Request) -> HandlerResult {
    let text = collect::scrape(&state).await;
    Ok(Response::bytes(200, encode::CONTENT_TYPE, text))
}
