//! Small request helpers shared by the endpoints.

use serde::de::DeserializeOwned;

use crate::http::{MatrixError, Request};

/// The body as JSON; an empty body counts as `{}` (clients send none to
/// e.g. `DELETE /devices/{id}` to start user-interactive auth).
pub fn json_body<T: DeserializeOwned>(req: &Request) -> Result<T, MatrixError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(MatrixError::from);
    }
    req.json()
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
