//! Server discovery: server-server-api "Resolving server names", step by
//! step, with `.well-known` answers cached per shard (24 h default, 48 h at
//! most, failures an hour at most with backoff) and whole resolutions
//! cached briefly so a new connection does not redo DNS each time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use monoio::time::Instant;

use super::client::{FedError, HttpsClient, Target};
use super::dns;

/// The spec's default federation port.
pub const DEFAULT_PORT: u16 = 8448;
/// `.well-known` answers without cache headers live this long.
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// And at most this long, whatever the headers say.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// Failed lookups are retried after 2 min, doubling up to an hour.
const WELL_KNOWN_ERROR_TTL_MIN: Duration = Duration::from_secs(120);
const WELL_KNOWN_ERROR_TTL_MAX: Duration = Duration::from_secs(3600);
/// Largest `.well-known` body (Synapse: 50 KiB).
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
/// Redirects followed for `.well-known`.
const MAX_REDIRECTS: usize = 5;
/// How long a full resolution is reused for new connections.
const TARGET_TTL: Duration = Duration::from_secs(300);

/// `host[:port]` of a server name; IPv6 literals lose their brackets.
/// `None` if it is not a valid server name.
pub fn split_host_port(name: &str) -> Option<(String, Option<u16>)> {
    if ruma::ServerName::parse(name).is_err() {
        return None;
    }
    if let Some(rest) = name.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip.to_owned(), port));
    }
    match name.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), Some(p.parse().ok()?))),
        None => Some((name.to_owned(), None)),
    }
}

/// The delegated server name of a `.well-known/matrix/server` body, if
/// the body is valid (a JSON object whose `m.server` is a server name).
pub fn parse_well_known(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let s = v.as_object()?.get("m.server")?.as_str()?;
    split_host_port(s).map(|_| s.to_owned())
}

/// How long to cache a successful `.well-known` answer, from its
/// `Cache-Control` header (`max-age`, `no-store`/`no-cache` = not at all).
pub fn well_known_ttl(cache_control: Option<&str>) -> Duration {
    let Some(cc) = cache_control else {
        return WELL_KNOWN_DEFAULT_TTL;
    };
    let mut ttl = WELL_KNOWN_DEFAULT_TTL;
    for d in cc.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        if d == "no-store" || d == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            if let Ok(secs) = v.trim_matches('"').parse::<u64>() {
                ttl = Duration::from_secs(secs);
            }
        }
    }
    ttl.min(WELL_KNOWN_MAX_TTL)
}

/// How a server name is reached before any DNS (steps 1 and 2 of the
/// spec), or that `.well-known` must be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstStep {
    Direct(Target),
    WellKnown { hostname: String },
}

/// Steps 1–2: IP literal, or explicit port.
pub fn first_step(server_name: &str) -> Option<FirstStep> {
    let (host, port) = split_host_port(server_name)?;
    if host.parse::<IpAddr>().is_ok() {
        return Some(FirstStep::Direct(Target {
            endpoints: vec![(host.clone(), port.unwrap_or(DEFAULT_PORT))],
            host_header: server_name.to_owned(),
            tls_name: host,
        }));
    }
    if let Some(port) = port {
        return Some(FirstStep::Direct(Target {
            endpoints: vec![(host.clone(), port)],
            host_header: server_name.to_owned(),
            tls_name: host,
        }));
    }
    Some(FirstStep::WellKnown { hostname: host })
}

/// Step 3.1/3.2 for a delegated name: `Some` if it needs no SRV lookup.
pub fn delegated_direct(delegated: &str) -> Option<Target> {
    let (host, port) = split_host_port(delegated)?;
    if host.parse::<IpAddr>().is_ok() {
        return Some(Target {
            endpoints: vec![(host.clone(), port.unwrap_or(DEFAULT_PORT))],
            host_header: delegated.to_owned(),
            tls_name: host,
        });
    }
    port.map(|p| Target {
        endpoints: vec![(host.clone(), p)],
        host_header: delegated.to_owned(),
        tls_name: host,
    })
}

/// Steps 3.3–3.5 and 4–6: SRV records (already ordered) for `hostname`,
/// else port 8448. Host header and certificate are `hostname`'s.
pub fn srv_target(hostname: &str, srv: &[dns::SrvRecord]) -> Target {
    let endpoints = if srv.is_empty() {
        vec![(hostname.to_owned(), DEFAULT_PORT)]
    } else {
        srv.iter().map(|r| (r.target.clone(), r.port)).collect()
    };
    Target {
        endpoints,
        host_header: hostname.to_owned(),
        tls_name: hostname.to_owned(),
    }
}

struct WellKnownEntry {
    expires: Instant,
    delegated: Option<String>,
    failures: u32,
}

/// The shard's resolver and its caches.
pub struct Resolver {
    nameservers: Vec<SocketAddr>,
    well_known: RefCell<HashMap<String, WellKnownEntry>>,
    targets: RefCell<HashMap<String, (Instant, Target)>>,
}

impl Resolver {
    pub fn new(nameservers: Vec<SocketAddr>) -> Resolver {
        Resolver {
            nameservers,
            well_known: RefCell::new(HashMap::new()),
            targets: RefCell::new(HashMap::new()),
        }
    }

    /// Where to connect for `server_name`.
    pub async fn resolve(
        &self,
        client: &HttpsClient,
        server_name: &str,
    ) -> Result<Target, FedError> {
        if let Some((exp, t)) = self.targets.borrow().get(server_name) {
            if *exp > Instant::now() {
                return Ok(t.clone());
            }
        }
        let target = match first_step(server_name)
            .ok_or_else(|| FedError::Resolve(format!("{server_name:?} is not a server name")))?
        {
            FirstStep::Direct(t) => t,
            FirstStep::WellKnown { hostname } => match self.well_known(client, &hostname).await {
                Some(delegated) => match delegated_direct(&delegated) {
                    Some(t) => t,
                    None => {
                        let host = split_host_port(&delegated)
                            .map(|(h, _)| h)
                            .unwrap_or(delegated);
                        self.via_srv(&host).await
                    }
                },
                None => self.via_srv(&hostname).await,
            },
        };
        let mut targets = self.targets.borrow_mut();
        if targets.len() > 10_000 {
            targets.clear();
        }
        targets.insert(
            server_name.to_owned(),
            (Instant::now() + TARGET_TTL, target.clone()),
        );
        Ok(target)
    }

    /// Forgets the cached resolution (after the target failed).
    pub fn forget(&self, server_name: &str) {
        self.targets.borrow_mut().remove(server_name);
    }

    async fn via_srv(&self, hostname: &str) -> Target {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let name = format!("{service}.{hostname}");
            match dns::lookup_srv(&self.nameservers, &name).await {
                Ok(recs) if !recs.is_empty() => {
                    return srv_target(hostname, &dns::order_srv(recs, dns::random_u32))
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(%name, error = %e, "SRV lookup failed"),
            }
        }
        srv_target(hostname, &[])
    }

    /// The cached or fetched `m.server` of `hostname` (`None`: no valid
    /// delegation, go on with SRV).
    async fn well_known(&self, client: &HttpsClient, hostname: &str) -> Option<String> {
        let now = Instant::now();
        let failures = match self.well_known.borrow().get(hostname) {
            Some(e) if e.expires > now => return e.delegated.clone(),
            Some(e) => e.failures,
            None => 0,
        };
        let fetched = fetch_well_known(client, hostname).await;
        let (delegated, ttl, failures) = match fetched {
            Ok((d, ttl)) => (Some(d), ttl, 0),
            Err(e) => {
                tracing::debug!(hostname, error = %e, "no valid .well-known/matrix/server");
                let backoff = WELL_KNOWN_ERROR_TTL_MIN
                    .saturating_mul(1u32 << failures.min(6))
                    .min(WELL_KNOWN_ERROR_TTL_MAX);
                (None, backoff, failures.saturating_add(1))
            }
        };
        let mut wk = self.well_known.borrow_mut();
        if wk.len() > 10_000 {
            wk.clear();
        }
        wk.insert(
            hostname.to_owned(),
            WellKnownEntry {
                expires: now + ttl,
                delegated: delegated.clone(),
                failures,
            },
        );
        delegated
    }
}

/// `GET https://<hostname>/.well-known/matrix/server`, following
/// redirects (to https URLs only, a bounded number of times).
async fn fetch_well_known(
    client: &HttpsClient,
    hostname: &str,
) -> Result<(String, Duration), FedError> {
    let mut host = hostname.to_owned();
    let mut port = 443u16;
    let mut path = "/.well-known/matrix/server".to_owned();
    for _ in 0..=MAX_REDIRECTS {
        let host_header = if port == 443 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let target = Target {
            endpoints: vec![(host.clone(), port)],
            host_header: host_header.clone(),
            tls_name: host.clone(),
        };
        let key = format!("wk:{host_header}");
        let resp = client
            .send(&key, &target, "GET", &path, &[], None, WELL_KNOWN_MAX_BYTES)
            .await?;
        match resp.status {
            200 => {
                let d = parse_well_known(&resp.body)
                    .ok_or_else(|| FedError::Invalid("bad .well-known body".into()))?;
                return Ok((d, well_known_ttl(resp.header("cache-control"))));
            }
            301 | 302 | 303 | 307 | 308 => {
                let loc = resp
                    .header("location")
                    .ok_or_else(|| FedError::Invalid("redirect without Location".into()))?;
                (host, port, path) = follow(&host, port, loc)
                    .ok_or_else(|| FedError::Invalid(format!("bad redirect {loc:?}")))?;
            }
            status => {
                return Err(FedError::Status {
                    status,
                    body: resp.body,
                })
            }
        }
    }
    Err(FedError::Invalid("too many redirects".into()))
}

/// Where a `Location` leads: an absolute `https://host[:port]/path` or a
/// path on the same host.
fn follow(host: &str, port: u16, location: &str) -> Option<(String, u16, String)> {
    if location.starts_with('/') {
        return Some((host.to_owned(), port, location.to_owned()));
    }
    let rest = location.strip_prefix("https://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (h, p) = split_host_port(authority)?;
    Some((h, p.unwrap_or(443), path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(endpoints: &[(&str, u16)], host_header: &str, tls: &str) -> Target {
        Target {
            endpoints: endpoints.iter().map(|(h, p)| (h.to_string(), *p)).collect(),
            host_header: host_header.into(),
            tls_name: tls.into(),
        }
    }

    #[test]
    fn host_port_splitting() {
        assert_eq!(split_host_port("a.org"), Some(("a.org".into(), None)));
        assert_eq!(
            split_host_port("a.org:443"),
            Some(("a.org".into(), Some(443)))
        );
        assert_eq!(
            split_host_port("[::1]:8448"),
            Some(("::1".into(), Some(8448)))
        );
        assert_eq!(split_host_port("[::1]"), Some(("::1".into(), None)));
        assert_eq!(split_host_port("1.2.3.4"), Some(("1.2.3.4".into(), None)));
        for bad in [
            "",
            "a.org:",
            "a.org:99999",
            "a b",
            "[::1",
            "[::1]x",
            "a.org:x",
        ] {
            assert_eq!(split_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn ip_literals_and_explicit_ports_skip_discovery() {
        assert_eq!(
            first_step("1.2.3.4"),
            Some(FirstStep::Direct(target(
                &[("1.2.3.4", 8448)],
                "1.2.3.4",
                "1.2.3.4"
            )))
        );
        assert_eq!(
            first_step("[2001:db8::1]:9000"),
            Some(FirstStep::Direct(target(
                &[("2001:db8::1", 9000)],
                "[2001:db8::1]:9000",
                "2001:db8::1"
            )))
        );
        assert_eq!(
            first_step("localhost:8448"),
            Some(FirstStep::Direct(target(
                &[("localhost", 8448)],
                "localhost:8448",
                "localhost"
            )))
        );
        assert_eq!(
            first_step("example.org"),
            Some(FirstStep::WellKnown {
                hostname: "example.org".into()
            })
        );
        assert_eq!(first_step("not a name"), None);
    }

    #[test]
    fn well_known_bodies() {
        assert_eq!(
            parse_well_known(br#"{"m.server":"matrix.example.org:443"}"#),
            Some("matrix.example.org:443".into())
        );
        assert_eq!(
            parse_well_known(br#"{"m.server":"delegated.org","extra":1}"#),
            Some("delegated.org".into())
        );
        for bad in [
            &br#"{"m.server": 1}"#[..],
            br#"{"m.server": "bad name!"}"#,
            br#"{"m.server": "a.org:notaport"}"#,
            br#"{}"#,
            br#"["m.server"]"#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                parse_well_known(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn well_known_cache_times() {
        assert_eq!(well_known_ttl(None), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(
            well_known_ttl(Some("public, max-age=600")),
            Duration::from_secs(600)
        );
        assert_eq!(well_known_ttl(Some("max-age=9999999")), WELL_KNOWN_MAX_TTL);
        assert_eq!(well_known_ttl(Some("no-store")), Duration::ZERO);
        assert_eq!(well_known_ttl(Some("max-age=junk")), WELL_KNOWN_DEFAULT_TTL);
    }

    #[test]
    fn delegation_steps() {
        // 3.1: IP literal, default port; Host header is the delegated name.
        assert_eq!(
            delegated_direct("10.0.0.1"),
            Some(target(&[("10.0.0.1", 8448)], "10.0.0.1", "10.0.0.1"))
        );
        // 3.2: hostname with port.
        assert_eq!(
            delegated_direct("m.example.org:443"),
            Some(target(
                &[("m.example.org", 443)],
                "m.example.org:443",
                "m.example.org"
            ))
        );
        // 3.3+: needs SRV.
        assert_eq!(delegated_direct("m.example.org"), None);
        // SRV answers keep their order; certificate and Host stay the
        // delegated name (not the SRV target).
        let recs = vec![
            dns::SrvRecord {
                priority: 0,
                weight: 0,
                port: 8449,
                target: "fed1.example.org".into(),
            },
            dns::SrvRecord {
                priority: 1,
                weight: 0,
                port: 8450,
                target: "fed2.example.org".into(),
            },
        ];
        assert_eq!(
            srv_target("m.example.org", &recs),
            target(
                &[("fed1.example.org", 8449), ("fed2.example.org", 8450)],
                "m.example.org",
                "m.example.org"
            )
        );
        // No SRV: port 8448.
        assert_eq!(
            srv_target("m.example.org", &[]),
            target(&[("m.example.org", 8448)], "m.example.org", "m.example.org")
        );
    }

    #[test]
    fn redirects() {
        assert_eq!(
            follow("a.org", 443, "/other"),
            Some(("a.org".into(), 443, "/other".into()))
        );
        assert_eq!(
            follow("a.org", 443, "https://b.org:8443/x/y"),
            Some(("b.org".into(), 8443, "/x/y".into()))
        );
        assert_eq!(follow("a.org", 443, "http://b.org/x"), None);
    }
}
