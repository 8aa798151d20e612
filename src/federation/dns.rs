//! DNS for server discovery without blocking a shard.
//!
//! - A/AAAA (and CNAME) through the system resolver (`getaddrinfo`, so
//!   `/etc/hosts` and nsswitch apply: `localhost` works) on the blocking
//!   pool.
//! - SRV as DNS messages (hickory-proto builds and parses them) over a
//!   monoio UDP socket to the system's nameservers (`/etc/resolv.conf`,
//!   read once at start) or `federation.dns_servers`.
//!
//! See docs/DECISIONS.md "Federation DNS".

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// How long one nameserver gets to answer an SRV query.
const SRV_TIMEOUT: Duration = Duration::from_secs(3);

/// One SRV answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot.
    pub target: String,
}

/// Why a lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsError {
    #[error("no address found for {0}")]
    NoAddress(String),
    #[error("DNS lookup failed: {0}")]
    Failed(String),
}

/// The nameservers named in `resolv.conf`-formatted text (port 53).
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("nameserver"))
                .then(|| parts.next())
                .flatten()
                .and_then(|ip| ip.split('%').next())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The system's nameservers (read on the calling thread: call at start).
pub fn system_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// Resolves `host` to addresses (with `port`) on the blocking pool.
pub async fn lookup_host(host: &str, port: u16) -> Result<Vec<SocketAddr>, DnsError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let owned = host.to_owned();
    let res = crate::blocking::run(move || {
        (owned.as_str(), port)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
    })
    .await
    .map_err(|e| DnsError::Failed(e.to_string()))?;
    match res {
        Ok(addrs) if !addrs.is_empty() => Ok(addrs),
        Ok(_) => Err(DnsError::NoAddress(host.to_owned())),
        Err(e) => Err(DnsError::Failed(format!("{host}: {e}"))),
    }
}

/// Looks up SRV records of `name` (e.g. `_matrix-fed._tcp.example.org`).
/// `Ok(empty)` when the name has none (NXDOMAIN, no answers, or the
/// "service unavailable" target `.`); `Err` only when no nameserver
/// answered usably.
pub async fn lookup_srv(
    nameservers: &[SocketAddr],
    name: &str,
) -> Result<Vec<SrvRecord>, DnsError> {
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| DnsError::Failed(format!("bad name {name}: {e}")))?;
    let mut last = DnsError::Failed("no nameserver configured".into());
    for ns in nameservers {
        match query_one(*ns, &qname).await {
            Ok(r) => return Ok(r),
            Err(e) => {
                tracing::debug!(nameserver = %ns, %name, error = %e, "SRV lookup failed");
                last = e;
            }
        }
    }
    Err(last)
}

async fn query_one(ns: SocketAddr, qname: &Name) -> Result<Vec<SrvRecord>, DnsError> {
    let fail = |e: &dyn std::fmt::Display| DnsError::Failed(e.to_string());
    let mut idb = [0u8; 2];
    getrandom::fill(&mut idb).map_err(|e| fail(&e))?;
    let id = u16::from_ne_bytes(idb);
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(qname.clone(), RecordType::SRV));
    let packet = msg.to_vec().map_err(|e| fail(&e))?;
    let bind: SocketAddr = if ns.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|e| fail(&e))?
    } else {
        "[::]:0".parse().map_err(|e| fail(&e))?
    };
    let sock = monoio::net::udp::UdpSocket::bind(bind).map_err(|e| fail(&e))?;
    sock.connect(ns).await.map_err(|e| fail(&e))?;
    let (res, _) = sock.send(packet).await;
    res.map_err(|e| fail(&e))?;
    let deadline = monoio::time::Instant::now() + SRV_TIMEOUT;
    loop {
        let buf = vec![0u8; 4096];
        let (res, buf) = match monoio::time::timeout_at(deadline, sock.recv(buf)).await {
            Ok(r) => r,
            Err(_) => return Err(DnsError::Failed(format!("{ns}: timed out"))),
        };
        let n = res.map_err(|e| fail(&e))?;
        let Ok(reply) = Message::from_vec(&buf[..n.min(buf.len())]) else {
            continue; // garbage: keep waiting for the real answer
        };
        if reply.id() != id || reply.message_type() != MessageType::Response {
            continue; // not ours (spoofing or a late answer)
        }
        return srv_answers(&reply);
    }
}

/// The SRV records of an answer, `Ok(empty)` for "none".
fn srv_answers(reply: &Message) -> Result<Vec<SrvRecord>, DnsError> {
    match reply.response_code() {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => return Ok(Vec::new()),
        other => return Err(DnsError::Failed(format!("nameserver answered {other}"))),
    }
    let mut out = Vec::new();
    for r in reply.answers() {
        if let RData::SRV(srv) = r.data() {
            let target = srv.target().to_ascii();
            let target = target.trim_end_matches('.').to_owned();
            if target.is_empty() {
                // RFC 2782: a target of "." means "no such service here".
                return Ok(Vec::new());
            }
            out.push(SrvRecord {
                priority: srv.priority(),
                weight: srv.weight(),
                port: srv.port(),
                target,
            });
        }
    }
    Ok(out)
}

/// RFC 2782 order: lowest priority first; within a priority, a weighted
/// random pick (weight 0 entries come last in their group, rarely picked).
/// `rand` yields uniform numbers (injected for tests).
pub fn order_srv(mut records: Vec<SrvRecord>, mut rand: impl FnMut(u32) -> u32) -> Vec<SrvRecord> {
    records.sort_by_key(|r| (r.priority, std::cmp::Reverse(r.weight)));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let prio = records[0].priority;
        let end = records.iter().take_while(|r| r.priority == prio).count();
        let mut group: Vec<SrvRecord> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let idx = if total == 0 {
                0
            } else {
                let mut pick = rand(total) % total;
                group
                    .iter()
                    .position(|r| {
                        let w = u32::from(r.weight);
                        if pick < w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .unwrap_or(0)
            };
            out.push(group.remove(idx));
        }
    }
    out
}

/// A uniform random `u32` below `bound`-ish (for [`order_srv`]).
pub fn random_u32(_bound: u32) -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    #[test]
    fn resolv_conf_parsing() {
        let ns = parse_resolv_conf(
            "# comment\nnameserver 10.0.0.2\nsearch x\nnameserver fe80::1%eth0\nnameserver bad\noptions ndots:1\n",
        );
        assert_eq!(
            ns,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn srv_order_is_priority_then_weight() {
        let recs = vec![
            srv(20, 0, 1, "c"),
            srv(10, 1, 2, "b"),
            srv(10, 99, 3, "a"),
            srv(5, 0, 4, "first"),
        ];
        // rand = 0 always picks the first (heaviest) entry of a group.
        let o = order_srv(recs.clone(), |_| 0);
        let names: Vec<_> = o.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, ["first", "a", "b", "c"]);
        // A pick past the heavy entry's weight takes the light one first;
        // priority still rules across groups.
        let o = order_srv(recs, |total| total - 1);
        let names: Vec<_> = o.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(names, ["first", "b", "a", "c"]);
        assert!(order_srv(Vec::new(), |_| 0).is_empty());
    }

    fn reply(records: &[(u16, u16, u16, &str)], code: ResponseCode) -> Message {
        use hickory_proto::rr::rdata::SRV;
        use hickory_proto::rr::Record;
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .set_response_code(code);
        for (p, w, port, t) in records {
            let rd = RData::SRV(SRV::new(*p, *w, *port, Name::from_ascii(t).unwrap()));
            m.add_answer(Record::from_rdata(
                Name::from_ascii("_matrix-fed._tcp.example.org.").unwrap(),
                300,
                rd,
            ));
        }
        m
    }

    #[test]
    fn srv_answer_parsing() {
        let m = reply(
            &[(10, 5, 8448, "matrix.example.org.")],
            ResponseCode::NoError,
        );
        assert_eq!(
            srv_answers(&m).unwrap(),
            vec![srv(10, 5, 8448, "matrix.example.org")]
        );
        let m = reply(&[(0, 0, 0, ".")], ResponseCode::NoError);
        assert!(srv_answers(&m).unwrap().is_empty(), "'.' = no service");
        let m = reply(&[], ResponseCode::NXDomain);
        assert!(srv_answers(&m).unwrap().is_empty());
        let m = reply(&[], ResponseCode::ServFail);
        assert!(srv_answers(&m).is_err());
    }

    /// A real UDP exchange with a tiny nameserver on loopback.
    #[test]
    fn srv_lookup_over_udp() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            // First a garbage datagram and a wrong id, then the real answer.
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let q = Message::from_vec(&buf[..n]).unwrap();
            assert_eq!(q.queries()[0].query_type(), RecordType::SRV);
            server.send_to(b"garbage", peer).unwrap();
            let mut wrong = reply(&[(1, 1, 1, "evil.org.")], ResponseCode::NoError);
            wrong.set_id(q.id().wrapping_add(1));
            server.send_to(&wrong.to_vec().unwrap(), peer).unwrap();
            let mut ok = reply(&[(10, 0, 8449, "fed.example.org.")], ResponseCode::NoError);
            ok.set_id(q.id());
            server.send_to(&ok.to_vec().unwrap(), peer).unwrap();
        });
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        let got = rt
            .block_on(async { lookup_srv(&[addr], "_matrix-fed._tcp.example.org").await })
            .unwrap();
        t.join().unwrap();
        assert_eq!(got, vec![srv(10, 0, 8449, "fed.example.org")]);
    }
}
