//! Inbound request authentication (server-server-api "Request
//! Authentication"): the `X-Matrix` header is parsed, its `destination`
//! must be us, and its signature over {method, uri, origin, destination,
//! content} must verify with the origin's key (fetched and cached by
//! `federation::keys`). Anything else is 401 `M_UNAUTHORIZED`.

use ruma::canonical_json::CanonicalJsonValue;

use crate::federation::x_matrix::{request_json, verify_signature, XMatrix};
use crate::http::{MatrixError, Request};
use crate::ratelimit::OriginPermit;
use crate::shard_state::ShardState;

/// The authenticated origin server of a request. It holds the origin's
/// `rc_federation` slot (`ratelimit::OriginLimits`) until the handler
/// drops it.
pub struct Origin(pub String, #[allow(dead_code)] OriginPermit);

fn unauthorized(msg: &'static str) -> MatrixError {
    MatrixError::unauthorized(msg)
}

/// Checks the request's signature; returns the origin server name.
pub async fn authenticate(state: &ShardState, req: &Request) -> Result<Origin, MatrixError> {
    let ours = state.config.server_name.as_str();
    let mut headers = Vec::new();
    for value in req.headers.get_all_bytes("authorization") {
        match XMatrix::parse(value) {
            Ok(x) => headers.push(x),
            Err(e) => {
                tracing::debug!(error = %e, "unparseable Authorization header");
            }
        }
    }
    let Some(first) = headers.first() else {
        return Err(unauthorized("Missing or malformed X-Matrix authorization"));
    };
    let origin = first.origin.clone();
    if headers.iter().any(|h| h.origin != origin) {
        return Err(unauthorized("Authorization headers name different origins"));
    }
    if ruma::ServerName::parse(&origin).is_err() {
        return Err(unauthorized("Origin is not a valid server name"));
    }
    if headers
        .iter()
        .any(|h| h.destination.as_deref().is_some_and(|d| d != ours))
    {
        return Err(unauthorized("Request is signed for another destination"));
    }
    let content = if req.body.is_empty() {
        None
    } else {
        let v: CanonicalJsonValue = serde_json::from_slice(&req.body)
            .map_err(|_| MatrixError::not_json("Body is not canonical JSON"))?;
        Some(v)
    };
    let uri = match &req.query {
        Some(q) => format!("{}?{q}", req.path),
        None => req.path.clone(),
    };
    let signed = request_json(req.method.as_str(), &uri, &origin, ours, content);
    for h in &headers {
        let key = match state.federation.verify_key(&origin, &h.key).await {
            Ok(k) => k,
            Err(e) => {
                tracing::info!(%origin, key_id = %h.key, error = %e, "cannot get the origin's key");
                continue;
            }
        };
        if verify_signature(&signed, &key, &h.sig) {
            // Limited after the signature: a forger cannot spend another
            // server's allowance.
            let permit = state.limits.federation.enter(&origin).await?;
            return Ok(Origin(origin, permit));
        }
    }
    Err(unauthorized("Invalid X-Matrix signature"))
}
