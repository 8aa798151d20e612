//! User id rules (appendices, "User Identifiers") plus Synapse's extra
//! registration rules.

use ruma::{OwnedUserId, UserId};

use super::AuthError;

/// Characters allowed in a new localpart: `a-z 0-9 . _ = - / +`.
fn allowed(c: char) -> bool {
    matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+')
}

/// Check a localpart for registration. Like Synapse: upper case is refused
/// (not folded), a leading `_` is reserved (application services), and
/// all-digit localparts are reserved for guests.
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<(), AuthError> {
    let bad = |m: &str| Err(AuthError::InvalidUsername(m.to_owned()));
    if localpart.is_empty() {
        return bad("User ID cannot be empty");
    }
    if !localpart.chars().all(allowed) {
        return bad("User ID can only contain characters a-z, 0-9, or '=_-./+'");
    }
    if localpart.starts_with('_') {
        return bad("User ID may not begin with _");
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return bad("Numeric user IDs are reserved for guest users.");
    }
    // "The length of a user ID, including the @ sigil and the domain, MUST
    // NOT exceed 255 bytes."
    if 1 + localpart.len() + 1 + server_name.len() > 255 {
        return bad("User ID may not be longer than 255 characters");
    }
    Ok(())
}

/// The full id of a valid new localpart.
pub fn new_user_id(localpart: &str, server_name: &str) -> Result<OwnedUserId, AuthError> {
    validate_localpart(localpart, server_name)?;
    UserId::parse(format!("@{localpart}:{server_name}"))
        .map_err(|e| AuthError::InvalidUsername(format!("Invalid user ID: {e}")))
}

/// The user a login names (`m.id.user`: a localpart or a full id). Matching
/// is case-insensitive, as in Synapse, by folding to lower case (new
/// localparts cannot contain upper case). Ids of other servers, or that do
/// not parse, are `None`: "no such user".
pub fn resolve_login_user(user: &str, server_name: &str) -> Option<OwnedUserId> {
    let user = user.trim();
    let full = if let Some(rest) = user.strip_prefix('@') {
        let (local, server) = rest.split_once(':')?;
        if server != server_name {
            return None;
        }
        format!("@{}:{server_name}", local.to_lowercase())
    } else {
        format!("@{}:{server_name}", user.to_lowercase())
    };
    UserId::parse(full).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localpart_rules() {
        for ok in ["alice", "a.b_c=d-e/f+g", "x1"] {
            assert!(validate_localpart(ok, "example.org").is_ok(), "{ok}");
        }
        for bad in ["", "Alice", "al ice", "_bot", "12345", "é", "a:b", "@a"] {
            assert!(
                matches!(
                    validate_localpart(bad, "example.org"),
                    Err(AuthError::InvalidUsername(_))
                ),
                "{bad}"
            );
        }
        assert!(validate_localpart(&"a".repeat(250), "example.org").is_err());
        assert_eq!(
            new_user_id("bob", "example.org").unwrap().as_str(),
            "@bob:example.org"
        );
    }

    #[test]
    fn login_names() {
        let s = "example.org";
        let id = |x: &str| resolve_login_user(x, s).map(|u| u.to_string());
        assert_eq!(id("alice").as_deref(), Some("@alice:example.org"));
        assert_eq!(
            id("@Alice:example.org").as_deref(),
            Some("@alice:example.org")
        );
        assert_eq!(id("@alice:other.org"), None);
        assert_eq!(id("@nocolon"), None);
    }
}
