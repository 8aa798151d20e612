//! Connection settings and the `postgres://` URL form.
//!
//! hearth's embedded cluster listens on a unix socket in its data dir, so a
//! host that is a directory path (or percent-encoded path) means a unix
//! socket `<dir>/.s.PGSQL.<port>`, as libpq does.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use super::error::DbError;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A TCP host name or IP literal. Names other than `localhost` must be
    /// resolved with [`ConnectConfig::resolve`] before shards start, since
    /// name resolution blocks.
    Tcp(String),
    /// A directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// Everything needed to open one connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectConfig {
    pub host: Host,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub application_name: Option<String>,
    /// Startup `options`, e.g. `-c statement_timeout=5000`.
    pub options: Option<String>,
    /// Upper bound on connect + authentication.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectConfig {
    // Never print the password into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            host: Host::Tcp("localhost".to_owned()),
            port: 5432,
            user: "postgres".to_owned(),
            password: None,
            dbname: "postgres".to_owned(),
            application_name: Some("hearth".to_owned()),
            options: None,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

fn decode(s: &str) -> Result<String, DbError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| DbError::Config(format!("invalid percent-encoding in {s:?}")))
}

fn parse_port(s: &str) -> Result<u16, DbError> {
    s.parse()
        .map_err(|_| DbError::Config(format!("invalid port {s:?}")))
}

fn host_from(s: String) -> Host {
    if s.starts_with('/') {
        Host::Unix(PathBuf::from(s))
    } else {
        Host::Tcp(s)
    }
}

impl ConnectConfig {
    /// Parse `postgres[ql]://[user[:password]@][host][:port][/dbname][?k=v&…]`.
    ///
    /// Query keys: `host` (a directory for unix sockets), `port`, `user`,
    /// `password`, `dbname`, `application_name`, `options`,
    /// `connect_timeout` (seconds). An empty host means the unix socket
    /// directory `/var/run/postgresql`, like libpq.
    pub fn from_url(url: &str) -> Result<ConnectConfig, DbError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| {
                DbError::Config("URL must start with postgres:// or postgresql://".into())
            })?;
        let mut cfg = ConnectConfig::default();
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (rest, None),
        };
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hp)) => {
                let (user, pass) = match userinfo.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (userinfo, None),
                };
                if !user.is_empty() {
                    cfg.user = decode(user)?;
                }
                if let Some(p) = pass {
                    cfg.password = Some(decode(p)?);
                }
                hp
            }
            None => authority,
        };
        let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
            // IPv6 literal: [::1]:5432
            let (h, after) = inner
                .split_once(']')
                .ok_or_else(|| DbError::Config("unterminated [ in host".into()))?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (decode(h)?, Some(p)),
                None => (decode(hostport)?, None),
            }
        };
        cfg.host = if host.is_empty() {
            Host::Unix(PathBuf::from("/var/run/postgresql"))
        } else {
            host_from(host)
        };
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            cfg.port = parse_port(p)?;
        }
        if let Some(db) = path.filter(|p| !p.is_empty()) {
            cfg.dbname = decode(db)?;
        } else {
            cfg.dbname = cfg.user.clone();
        }
        let mut dbname_set = path.is_some_and(|p| !p.is_empty());
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v)?;
            match k {
                "host" => cfg.host = host_from(v),
                "port" => cfg.port = parse_port(&v)?,
                "user" => cfg.user = v,
                "password" => cfg.password = Some(v),
                "dbname" => {
                    cfg.dbname = v;
                    dbname_set = true;
                }
                "application_name" => cfg.application_name = Some(v),
                "options" => cfg.options = Some(v),
                "connect_timeout" => {
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| DbError::Config(format!("invalid connect_timeout {v:?}")))?;
                    cfg.connect_timeout = Duration::from_secs(secs.max(1));
                }
                // libpq options we accept and ignore.
                "sslmode" if v == "disable" || v == "prefer" || v == "allow" => {}
                other => {
                    return Err(DbError::Config(format!(
                        "unsupported URL parameter {other:?}"
                    )))
                }
            }
        }
        if !dbname_set {
            cfg.dbname = cfg.user.clone();
        }
        Ok(cfg)
    }

    /// The socket path when connecting over a unix socket.
    pub fn unix_socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// Resolve a TCP host name to an IP literal. This blocks (getaddrinfo):
    /// call it on the main thread before shards start.
    pub fn resolve(&mut self) -> Result<(), DbError> {
        use std::net::ToSocketAddrs;
        if let Host::Tcp(name) = &self.host {
            if name.parse::<IpAddr>().is_ok() || name == "localhost" {
                return Ok(());
            }
            let addr = (name.as_str(), self.port)
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| DbError::Config(format!("host {name:?} did not resolve")))?;
            self.host = Host::Tcp(addr.ip().to_string());
        }
        Ok(())
    }

    /// The TCP address to connect to, without blocking name resolution.
    pub(crate) fn tcp_addr(&self) -> Result<std::net::SocketAddr, DbError> {
        match &self.host {
            Host::Tcp(name) if name == "localhost" => {
                Ok((IpAddr::from([127, 0, 0, 1]), self.port).into())
            }
            Host::Tcp(name) => name
                .parse::<IpAddr>()
                .map(|ip| (ip, self.port).into())
                .map_err(|_| {
                    DbError::Config(format!(
                        "host {name:?} is not an IP literal: call ConnectConfig::resolve() at startup"
                    ))
                }),
            Host::Unix(_) => Err(DbError::Config("not a TCP host".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tcp_url() {
        let c = ConnectConfig::from_url("postgres://alice:s%40cret@10.0.0.1:6543/matrix").unwrap();
        assert_eq!(c.host, Host::Tcp("10.0.0.1".into()));
        assert_eq!(c.port, 6543);
        assert_eq!(c.user, "alice");
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.dbname, "matrix");
    }

    #[test]
    fn unix_socket_in_query() {
        let c =
            ConnectConfig::from_url("postgres:///hearth?host=/tmp/sock%20dir&port=5433").unwrap();
        assert_eq!(c.host, Host::Unix("/tmp/sock dir".into()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname, "hearth");
        assert_eq!(
            c.unix_socket_path().unwrap(),
            PathBuf::from("/tmp/sock dir/.s.PGSQL.5433")
        );
    }

    #[test]
    fn unix_socket_percent_encoded_host() {
        let c = ConnectConfig::from_url("postgresql://bob@%2Fvar%2Flib%2Fhearth/db").unwrap();
        assert_eq!(c.host, Host::Unix("/var/lib/hearth".into()));
        assert_eq!(c.user, "bob");
        assert_eq!(c.dbname, "db");
        assert_eq!(c.port, 5432);
    }

    #[test]
    fn defaults_and_ipv6() {
        let c = ConnectConfig::from_url("postgres://[::1]:7000").unwrap();
        assert_eq!(c.host, Host::Tcp("::1".into()));
        assert_eq!(c.port, 7000);
        assert_eq!(c.dbname, "postgres");
        assert!(c.tcp_addr().is_ok());
    }

    #[test]
    fn bad_urls_are_errors() {
        for u in [
            "mysql://x",
            "postgres://h:notaport/db",
            "postgres://h/db?bogus=1",
            "postgres://h/%ff",
            "postgres://[::1/db",
        ] {
            assert!(ConnectConfig::from_url(u).is_err(), "{u}");
        }
    }

    #[test]
    fn password_not_in_debug() {
        let c = ConnectConfig::from_url("postgres://u:hunter2@h/db").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
