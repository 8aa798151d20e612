//! `m.room.server_acl` (client-server API "Server Access Control Lists"):
//! whether a server may take part in a room. Pure: the caller hands in
//! the room's ACL content (rooms own room state; wiring comes with the
//! inbound transaction and membership endpoints).

use serde_json::Value;

/// Whether `server_name` (port ignored, as the spec says) passes the ACL
/// `content`. No ACL event at all means allowed; callers pass `None`.
pub fn server_allowed(content: Option<&Value>, server_name: &str) -> bool {
    let Some(content) = content else {
        return true;
    };
    let host = match super::resolve::split_host_port(server_name) {
        Some((h, _)) => h,
        None => return false,
    };
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    // Synapse compares IPv6 literals with their brackets.
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let allow_ip_literals = content
        .get("allow_ip_literals")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    if is_ip && !allow_ip_literals {
        return false;
    }
    let globs = |key: &str| -> Vec<String> {
        content
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    if globs("deny").iter().any(|g| glob_match(g, &host)) {
        return false;
    }
    globs("allow").iter().any(|g| glob_match(g, &host))
}

/// `*` any run of characters, `?` exactly one; case-insensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    // Iterative matcher with one backtrack point: linear-ish, no recursion
    // (hostile patterns cannot blow the stack or the CPU).
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything.org"));
        assert!(glob_match("*.evil.com", "a.evil.com"));
        assert!(!glob_match("*.evil.com", "evil.com"));
        assert!(glob_match("ev?l.com", "EVIL.com"));
        assert!(!glob_match("ev?l.com", "eviil.com"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
    }

    #[test]
    fn spec_example_acl() {
        let acl = json!({
            "allow": ["*"],
            "allow_ip_literals": false,
            "deny": ["*.evil.com", "evil.com"]
        });
        assert!(server_allowed(Some(&acl), "good.org"));
        assert!(server_allowed(Some(&acl), "good.org:8448"));
        assert!(!server_allowed(Some(&acl), "evil.com"));
        assert!(!server_allowed(Some(&acl), "evil.com:1234"));
        assert!(!server_allowed(Some(&acl), "sub.evil.com"));
        assert!(!server_allowed(Some(&acl), "1.2.3.4"));
        assert!(!server_allowed(Some(&acl), "[::1]:8448"));
        assert!(server_allowed(None, "evil.com"));
    }

    #[test]
    fn empty_allow_denies_everyone() {
        assert!(!server_allowed(Some(&json!({})), "a.org"));
        assert!(!server_allowed(
            Some(&json!({"allow": "not a list"})),
            "a.org"
        ));
        let ips = json!({"allow": ["*"]});
        assert!(
            server_allowed(Some(&ips), "1.2.3.4"),
            "IP literals allowed by default"
        );
        assert!(!server_allowed(Some(&ips), "not a server name"));
    }
}
