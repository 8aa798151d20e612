//! Small request helpers shared by the endpoints.

use serde::de::DeserializeOwned;

use crate::http::{MatrixError, Request};

/// The body as JSON where the spec requires one: an empty body is 400
/// `M_NOT_JSON`, as Synapse answers (it used to count as `{}`, so
/// `/createRoom` and `/send` accepted nothing at all).
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, MatrixError> {
    json_bytes(&req.body)
}

/// [`json_body`] over the body's bytes.
pub fn json_bytes<T: DeserializeOwned>(body: &[u8]) -> Result<T, MatrixError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(MatrixError::not_json("Content not JSON."));
    }
    serde_json::from_slice(body).map_err(MatrixError::from)
}

/// The body as JSON where it is optional; an empty body counts as `{}`.
/// Clients send none to `POST /join`, `/leave`, `/logout`, to receipts, and
/// to `DELETE /devices/{id}` or `/account/password` to start user-interactive
/// auth (Element sends `{}`, others nothing).
pub fn optional_json_body<T: DeserializeOwned>(req: &Request) -> Result<T, MatrixError> {
    if is_empty(req) {
        return serde_json::from_slice(b"{}").map_err(MatrixError::from);
    }
    req.json()
}

fn is_empty(req: &Request) -> bool {
    req.body.iter().all(u8::is_ascii_whitespace)
}

/// The peer address, recorded as a device's last-seen IP.
pub fn client_ip(req: &Request) -> Option<String> {
    req.remote_addr.map(|a| a.ip().to_string())
}

/// Client-chosen device ids: non-empty, bounded, printable.
pub fn validate_device_id(d: &str) -> Result<(), MatrixError> {
    if d.is_empty() || d.len() > 255 || d.chars().any(char::is_control) {
        return Err(MatrixError::invalid_param("Invalid device_id"));
    }
    Ok(())
}
