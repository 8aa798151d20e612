//! `GET /_matrix/key/v2/server` (our keys) and the notary API
//! `/_matrix/key/v2/query` (server-server-api "Retrieving server keys"):
//! ours, or a remote server's as we hold or fetch them, co-signed by us.

use std::rc::Rc;

use ruma::canonical_json::CanonicalJsonObject;
use serde::Deserialize;
use serde_json::json;

use crate::events::DEFAULT_KEY_VALIDITY_MS;
use crate::http::{HandlerResult, MatrixError, Request, Response};
use crate::primitives::unix_ms;
use crate::shard_state::ShardState;

/// Servers one notary POST may ask about (each may cost a fetch).
const MAX_SERVERS_PER_QUERY: usize = 100;

fn own_keys(state: &ShardState) -> Result<CanonicalJsonObject, MatrixError> {
    let fed = &state.federation;
    fed.key
        .key_server_response_with_old(unix_ms(), DEFAULT_KEY_VALIDITY_MS, &fed.old_keys)
        .map_err(|e| {
            tracing::error!(error = %e, "cannot sign our key response");
            MatrixError::unknown("Cannot sign the key response")
        })
}

/// `GET /_matrix/key/v2/server` (and the deprecated `/server/{keyId}`).
pub async fn server(state: Rc<ShardState>, _req: Request) -> HandlerResult {
    Ok(Response::json(200, &own_keys(&state)?))
}

/// One server's keys for a notary answer: ours are already signed by
/// us; a remote server's get our signature added to the origin's.
async fn notary_keys(
    state: &ShardState,
    server: &str,
    min_valid_until: u64,
) -> Result<Vec<CanonicalJsonObject>, MatrixError> {
    if server == state.config.server_name {
        return Ok(vec![own_keys(state)?]);
    }
    if ruma::ServerName::parse(server).is_err() {
        return Ok(Vec::new());
    }
    let fed = &state.federation;
    let keys = match fed.server_keys(server, min_valid_until).await {
        Ok(k) => k,
        // A server we cannot reach and hold nothing for: an empty list, as
        // the spec says; an expired cached answer is better than nothing.
        Err(e) => {
            tracing::info!(%server, error = %e, "notary: no keys");
            match fed.cached_server_keys(server) {
                Some(k) => k,
                None => return Ok(Vec::new()),
            }
        }
    };
    let mut signed = keys.signed.clone();
    fed.key.sign_json(&mut signed).map_err(|e| {
        tracing::error!(error = %e, "cannot co-sign keys");
        MatrixError::unknown("Cannot sign the key response")
    })?;
    Ok(vec![signed])
}

/// `GET /_matrix/key/v2/query/{serverName}`.
pub async fn query_one(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let server = req.param_str("serverName")?.into_owned();
    let min: u64 = req
        .query_as::<u64>("minimum_valid_until_ts")?
        .unwrap_or_else(unix_ms);
    let keys = notary_keys(&state, &server, min).await?;
    Ok(Response::json(200, &json!({ "server_keys": keys })))
}

#[derive(Deserialize)]
struct QueryBody {
    server_keys:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, QueryCriteria>>,
}

#[derive(Deserialize)]
struct QueryCriteria {
    minimum_valid_until_ts: Option<u64>,
}

/// `POST /_matrix/key/v2/query`.
pub async fn query_many(state: Rc<ShardState>, req: Request) -> HandlerResult {
    let body: QueryBody = req.json()?;
    if body.server_keys.len() > MAX_SERVERS_PER_QUERY {
        return Err(MatrixError::bad_json(format!(
            "At most {MAX_SERVERS_PER_QUERY} servers per query"
        )));
    }
    let now = unix_ms();
    let mut out = Vec::new();
    for (server, criteria) in &body.server_keys {
        let min = criteria
            .values()
            .filter_map(|c| c.minimum_valid_until_ts)
            .max()
            .unwrap_or(now);
        out.extend(notary_keys(&state, server, min).await?);
    }
    Ok(Response::json(200, &json!({ "server_keys": out })))
}
