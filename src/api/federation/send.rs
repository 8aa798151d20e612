//! `PUT /_matrix/federation/v1/send/{txnId}` (server-server
//! "Transactions"): the origin's PDUs and EDUs. The work is
//! `federation::inbound`'s; this is the HTTP edge: authentication, the
//! body's shape and its limits.

use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;

use crate::api::util::json_body;
use crate::federation::inbound::{self, MAX_EDUS, MAX_PDUS};
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::shard_state::ShardState;

use super::auth::authenticate;

#[derive(Deserialize)]
struct Transaction {
    #[serde(default)]
    pdus: Vec<Value>,
    #[serde(default)]
    edus: Vec<Value>,
}

pub(super) async fn send_transaction(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let origin = authenticate(&state, &req).await?;
    let txn_id = req.param_str("txnId")?.into_owned();
    let txn: Transaction = json_body(&req)?;
    if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
        return Err(MatrixError::bad_json(format!(
            "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let answer = inbound::receive(&state, &origin.0, &txn_id, txn.pdus, txn.edus).await?;
    Ok(Response::json(200, &answer))
}
