//! A test-only door to the "apply a PDU received from elsewhere" entry
//! point, until federation's `/send` exists: `POST /_hearth/test/pdu`
//! with `{"key": {"server", "key_id", "public_key"}?, "room_id", "pdu",
//! "outlier"?}` fills the remote key store, applies the PDU and answers
//! what became of it. Registered always, answers 404 `M_UNRECOGNIZED`
//! unless the process was started with `HEARTHTEST_INJECT_PDUS=1`
//! (tests/rooms_graph.rs does); it trusts whatever key it is given, so it
//! must never be enabled in production.

use std::rc::Rc;
use std::sync::OnceLock;

use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::api::util::json_body;
use crate::http::{HandlerResult, MatrixError, Method, Request, Response, Router};
use crate::rooms::client;
use crate::rooms::create::to_canonical_json;
use crate::rooms::receive::{Applied, Received};
use crate::shard_state::ShardState;

/// The environment variable enabling the route.
pub const ENV: &str = "HEARTHTEST_INJECT_PDUS";

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(ENV).is_ok_and(|v| v == "1"))
}

#[derive(Deserialize)]
struct Key {
    server: String,
    key_id: String,
    public_key: String,
}

#[derive(Deserialize)]
struct Body {
    key: Option<Key>,
    room_id: String,
    pdu: Map<String, Value>,
    #[serde(default)]
    outlier: bool,
}

pub(super) fn routes(r: Router<ShardState>) -> Router<ShardState> {
    r.route(Method::Post, "/_hearth/test/pdu", inject)
}

async fn inject(state: Rc<ShardState>, req: Request) -> HandlerResult {
    if !enabled() {
        return Err(MatrixError::new(
            404,
            "M_UNRECOGNIZED",
            "Unrecognized request",
        ));
    }
    let body: Body = json_body(&req)?;
    if let Some(k) = body.key {
        client::add_remote_key(&state.mesh, k.server, k.key_id, k.public_key).await?;
    }
    let room_id = OwnedRoomId::try_from(body.room_id)
        .map_err(|_| MatrixError::invalid_param("Invalid room id"))?;
    let received = Received {
        outlier: body.outlier,
        ..Received::new(room_id, to_canonical_json(body.pdu)?)
    };
    let out = match client::apply_pdu(&state.mesh, received).await? {
        Applied::Accepted(id) => json!({"outcome": "accepted", "event_id": id}),
        Applied::SoftFailed(id) => json!({"outcome": "soft_failed", "event_id": id}),
        Applied::Rejected { event_id, reason } => {
            json!({"outcome": "rejected", "event_id": event_id, "reason": reason})
        }
        Applied::Outlier {
            event_id,
            missing_prev_events,
        } => json!({"outcome": "outlier", "event_id": event_id, "missing": missing_prev_events}),
        Applied::MissingAuthEvents(ids) => {
            json!({"outcome": "missing_auth_events", "missing": ids})
        }
        Applied::AlreadyKnown(id) => json!({"outcome": "already_known", "event_id": id}),
        Applied::Backfilled(id) => json!({"outcome": "backfilled", "event_id": id}),
    };
    Ok(Response::json(200, &out))
}
