//! Matrix "standard error response" (client-server API, "Standard error response"):
//! `{"errcode": "M_…", "error": "…"}` with the right HTTP status.
//!
//! The type of an error answer; handlers return `Err(MatrixError::…)` and the
//! server turns it into a response. Domain errors become `MatrixError`s in one
//! place, `api/errors.rs` (the HTTP edge): no domain module names an errcode.

use std::borrow::Cow;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::response::Response;

/// A Matrix error: HTTP status + `errcode` + human-readable `error`, plus any
/// extra keys some errcodes define (e.g. `retry_after_ms`, `soft_logout`).
#[derive(Debug, Clone, PartialEq)]
pub struct MatrixError {
    pub status: u16,
    pub errcode: &'static str,
    pub error: Cow<'static, str>,
    /// Extra top-level keys of the error object; `None` keeps the common case
    /// allocation-free.
    pub extra: Option<Box<Map<String, Value>>>,
    /// `Retry-After` header in seconds (rate limiting, spec "Rate limiting").
    pub retry_after_secs: Option<u64>,
}

impl std::error::Error for MatrixError {}

impl fmt::Display for MatrixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.errcode, self.error)
    }
}

impl Serialize for MatrixError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let extra_len = self.extra.as_ref().map_or(0, |m| m.len());
        let mut map = s.serialize_map(Some(2 + extra_len))?;
        map.serialize_entry("errcode", self.errcode)?;
        map.serialize_entry("error", &self.error)?;
        if let Some(extra) = &self.extra {
            for (k, v) in extra.iter() {
                // The two mandatory keys cannot be overridden by extras.
                if k != "errcode" && k != "error" {
                    map.serialize_entry(k, v)?;
                }
            }
        }
        map.end()
    }
}

/// Whether a peer's error body names `M_UNRECOGNIZED`: the endpoint is
/// unknown there (spec "Unsupported endpoints"), as opposed to the thing
/// asked for. Here because errcodes, ours and peers', are the HTTP edge's.
pub fn names_unrecognized(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errcode")?.as_str().map(|c| c == "M_UNRECOGNIZED"))
        .unwrap_or(false)
}

macro_rules! ctor {
    ($(#[$doc:meta])* $name:ident, $status:expr, $code:expr) => {
        $(#[$doc])*
        pub fn $name(msg: impl Into<Cow<'static, str>>) -> Self {
            Self::new($status, $code, msg)
        }
    };
}

impl MatrixError {
    pub fn new(status: u16, errcode: &'static str, msg: impl Into<Cow<'static, str>>) -> Self {
        MatrixError {
            status,
            errcode,
            error: msg.into(),
            extra: None,
            retry_after_secs: None,
        }
    }

    /// Adds an extra top-level key to the error object.
    pub fn with_field(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    /// Replaces the HTTP status, keeping errcode and message.
    /// Adds a `Retry-After` header (503s the client may retry).
    pub fn with_retry_after_secs(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    ctor!(
        /// 404 `M_NOT_FOUND`: no resource was found for this request.
        not_found, 404, "M_NOT_FOUND"
    );
    ctor!(
        /// 403 `M_FORBIDDEN`.
        forbidden, 403, "M_FORBIDDEN"
    );
    ctor!(
        /// 400 `M_BAD_JSON`: valid JSON of the wrong shape.
        bad_json, 400, "M_BAD_JSON"
    );
    ctor!(
        /// 400 `M_NOT_JSON`: the body is not JSON at all.
        not_json, 400, "M_NOT_JSON"
    );
    ctor!(
        /// 413 `M_TOO_LARGE`.
        too_large, 413, "M_TOO_LARGE"
    );
    ctor!(
        /// 400 `M_INVALID_PARAM`: a parameter has the wrong value.
        invalid_param, 400, "M_INVALID_PARAM"
    );
    ctor!(
        /// 400 `M_MISSING_PARAM`.
        missing_param, 400, "M_MISSING_PARAM"
    );
    ctor!(
        /// 500 `M_UNKNOWN`: an internal error (prefer the HTTP status, says the spec).
        unknown, 500, "M_UNKNOWN"
    );
    ctor!(
        /// 400 `M_UNKNOWN`: the request was invalid in some generic way.
        bad_request, 400, "M_UNKNOWN"
    );
    ctor!(
        /// 401 `M_MISSING_TOKEN`.
        missing_token, 401, "M_MISSING_TOKEN"
    );
    ctor!(
        /// 401 `M_UNAUTHORIZED`.
        unauthorized, 401, "M_UNAUTHORIZED"
    );
    ctor!(
        /// 400 `M_USER_IN_USE`.
        user_in_use, 400, "M_USER_IN_USE"
    );
    ctor!(
        /// 400 `M_INVALID_USERNAME`.
        invalid_username, 400, "M_INVALID_USERNAME"
    );
    ctor!(
        /// 400 `M_EXCLUSIVE`.
        exclusive, 400, "M_EXCLUSIVE"
    );
    ctor!(
        /// 400 `M_ROOM_IN_USE`.
        room_in_use, 400, "M_ROOM_IN_USE"
    );
    ctor!(
        /// 400 `M_INVALID_ROOM_STATE`.
        invalid_room_state, 400, "M_INVALID_ROOM_STATE"
    );
    ctor!(
        /// 400 `M_UNSUPPORTED_ROOM_VERSION`.
        unsupported_room_version, 400, "M_UNSUPPORTED_ROOM_VERSION"
    );
    ctor!(
        /// 400 `M_BAD_STATE`.
        bad_state, 400, "M_BAD_STATE"
    );
    ctor!(
        /// 403 `M_GUEST_ACCESS_FORBIDDEN`.
        guest_access_forbidden, 403, "M_GUEST_ACCESS_FORBIDDEN"
    );
    ctor!(
        /// 403 `M_USER_DEACTIVATED`.
        user_deactivated, 403, "M_USER_DEACTIVATED"
    );
    ctor!(
        /// 401 `M_USER_LOCKED`.
        user_locked, 401, "M_USER_LOCKED"
    );
    ctor!(
        /// 403 `M_USER_SUSPENDED`.
        user_suspended, 403, "M_USER_SUSPENDED"
    );
    ctor!(
        /// 401 `M_UNKNOWN_TOKEN` (use [`MatrixError::unknown_token`] for soft logout).
        unknown_token_msg, 401, "M_UNKNOWN_TOKEN"
    );

    /// 404 `M_UNRECOGNIZED`: the endpoint is not implemented.
    pub fn unrecognized() -> Self {
        Self::new(404, "M_UNRECOGNIZED", "Unrecognized request")
    }

    /// 405 `M_UNRECOGNIZED`: the endpoint exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            405,
            "M_UNRECOGNIZED",
            "Unrecognized request: method not allowed",
        )
    }

    /// 401 `M_UNKNOWN_TOKEN` with the `soft_logout` flag (spec "Soft logout").
    pub fn unknown_token(soft_logout: bool) -> Self {
        let e = Self::new(401, "M_UNKNOWN_TOKEN", "Unrecognised access token");
        if soft_logout {
            e.with_field("soft_logout", true)
        } else {
            e
        }
    }

    /// 429 `M_LIMIT_EXCEEDED`, with `retry_after_ms` and a `Retry-After` header
    /// (spec "Rate limiting").
    pub fn limit_exceeded(retry_after_ms: Option<u64>) -> Self {
        let mut e = Self::new(429, "M_LIMIT_EXCEEDED", "Too many requests");
        if let Some(ms) = retry_after_ms {
            e.retry_after_secs = Some(ms.div_ceil(1000).max(1));
            e = e.with_field("retry_after_ms", ms);
        }
        e
    }

    /// 400 `M_INCOMPATIBLE_ROOM_VERSION` carrying the room's version.
    pub fn incompatible_room_version(room_version: &str) -> Self {
        Self::new(
            400,
            "M_INCOMPATIBLE_ROOM_VERSION",
            "Your homeserver does not support the features required to join this room",
        )
        .with_field("room_version", room_version)
    }

    /// 403 `M_RESOURCE_LIMIT_EXCEEDED`; the spec requires `admin_contact`.
    pub fn resource_limit_exceeded(admin_contact: &str) -> Self {
        Self::new(403, "M_RESOURCE_LIMIT_EXCEEDED", "Resource limit exceeded")
            .with_field("admin_contact", admin_contact)
    }

    /// The JSON body bytes of this error.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serializing a map of strings and JSON values cannot fail.
        serde_json::to_vec(self)
            .unwrap_or_else(|_| br#"{"errcode":"M_UNKNOWN","error":"Internal error"}"#.to_vec())
    }

    /// Turns the error into a JSON response with its status (and
    /// `Retry-After` when set).
    pub fn into_response(self) -> Response {
        let mut resp = Response::json_bytes(self.status, self.to_json_bytes());
        if let Some(secs) = self.retry_after_secs {
            resp = resp.with_header("Retry-After", secs.to_string());
        }
        resp
    }
}

impl From<MatrixError> for Response {
    fn from(e: MatrixError) -> Self {
        e.into_response()
    }
}

/// Classifies a `serde_json` error: syntax errors mean "not JSON", data
/// errors (valid JSON, wrong shape) mean "bad JSON".
impl From<serde_json::Error> for MatrixError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => MatrixError::bad_json(format!("Malformed JSON: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                MatrixError::not_json(format!("Content not JSON: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_standard_shape() {
        let e = MatrixError::not_found("nope");
        let v: Value = serde_json::from_slice(&e.to_json_bytes()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errcode": "M_NOT_FOUND", "error": "nope"})
        );
    }

    #[test]
    fn extras_and_retry_after() {
        let e = MatrixError::limit_exceeded(Some(1500));
        assert_eq!(e.status, 429);
        assert_eq!(e.retry_after_secs, Some(2));
        let v: Value = serde_json::from_slice(&e.to_json_bytes()).unwrap();
        assert_eq!(v["retry_after_ms"], 1500);
        assert_eq!(v["errcode"], "M_LIMIT_EXCEEDED");
        let r = e.into_response();
        assert_eq!(r.header("retry-after"), Some("2"));
    }

    #[test]
    fn extras_cannot_override_errcode() {
        let e = MatrixError::forbidden("x").with_field("errcode", "M_HACK");
        let v: Value = serde_json::from_slice(&e.to_json_bytes()).unwrap();
        assert_eq!(v["errcode"], "M_FORBIDDEN");
    }

    #[test]
    fn unrecognized_bodies_are_told_apart() {
        assert!(names_unrecognized(
            br#"{"errcode":"M_UNRECOGNIZED","error":"x"}"#
        ));
        assert!(!names_unrecognized(br#"{"errcode":"M_NOT_FOUND"}"#));
        assert!(!names_unrecognized(b"<html>"));
    }

    #[test]
    fn json_error_classification() {
        let e: MatrixError = serde_json::from_str::<Value>("{nope").unwrap_err().into();
        assert_eq!(e.errcode, "M_NOT_JSON");
        let e: MatrixError = serde_json::from_str::<u32>("\"str\"").unwrap_err().into();
        assert_eq!(e.errcode, "M_BAD_JSON");
    }
}
