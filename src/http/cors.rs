//! CORS, as the client-server spec asks ("Web Browser Clients"): the
//! recommended headers on *every* response, and `OPTIONS` preflights answered
//! for any path without running endpoint logic.

use super::response::Response;

/// The three CORS header lines written on every response. HEAD is listed as
/// well because we serve it (the spec's note allows adding methods we support).
pub(crate) const CORS_HEADERS: &[u8] = b"Access-Control-Allow-Origin: *\r\n\
Access-Control-Allow-Methods: GET, HEAD, POST, PUT, DELETE, OPTIONS\r\n\
Access-Control-Allow-Headers: X-Requested-With, Content-Type, Authorization\r\n";

/// Answer to an `OPTIONS` request on any path. The spec says the server
/// "MUST NOT perform any logic defined for the endpoints" for `OPTIONS`, so
/// no handler runs; the body is `{}` like other homeservers send.
pub fn preflight_response() -> Response {
    Response::json_bytes(200, &b"{}"[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_header_block_is_well_formed() {
        let s = std::str::from_utf8(CORS_HEADERS).unwrap();
        let lines: Vec<&str> = s.split_terminator("\r\n").collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.contains(": ")));
        assert_eq!(preflight_response().status, 200);
    }
}
