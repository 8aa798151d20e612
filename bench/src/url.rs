//! Just enough URL parsing for `http://host:port/path?query`.

use std::net::{SocketAddr, ToSocketAddrs};

#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {authority}"))?;
        Ok(Target {
            addr,
            host_header: authority.to_string(),
            path: path.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_path() {
        let t = Target::parse("http://127.0.0.1:8008/_matrix/client/versions?x=1").unwrap();
        assert_eq!(t.addr.port(), 8008);
        assert_eq!(t.path, "/_matrix/client/versions?x=1");
        assert_eq!(t.host_header, "127.0.0.1:8008");
        assert!(Target::parse("https://x").is_err());
        assert_eq!(Target::parse("http://127.0.0.1:9").unwrap().path, "/");
    }
}
