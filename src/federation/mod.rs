//! The server-server transport: how hearth reaches other servers and
//! checks who is calling it.
//!
//! - `resolve` + `dns`: server discovery (spec "Resolving server names").
//! - `client`: HTTPS/1.1 on monoio + rustls, connections reused per
//!   destination, timeouts, size limits, the IP policy (`ip_range`).
//! - `x_matrix`: request signing and the `Authorization` header.
//! - `keys`: remote signing keys, fetched and cached per shard.
//! - `acl`: `m.room.server_acl` checks (given the ACL content).
//! - `inbound` + `ingest` + `edus`: received transactions: checked and
//!   staged durably before the answer, then applied per room on its owner.
//! - `join`: joining rooms hosted elsewhere (make_join, send_join).
//! - `backfill`: history older than ours from the room's other servers.
//! - `sender`: outbound transactions, one queue per destination.
//! - `device_lists`: remote users' device lists, from their updates.
//! - `profile`: remote users' profiles (`/query/profile`).
//! - `membership`: the resident side of send_join/leave/knock, and invites
//!   of our users co-signed.
//!
//! One [`Federation`] per shard (`Rc`), all of it shard-local.

pub mod acl;
pub mod backfill;
pub mod client;
pub mod device_lists;
pub mod dns;
pub mod edus;
pub mod inbound;
pub mod ingest;
pub mod invites;
pub mod ip_range;
pub mod join;
pub mod keys;
pub mod media;
pub mod membership;
pub mod profile;
pub mod resolve;
pub mod resync;
pub mod sender;
pub mod tls;
pub mod x_matrix;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ruma::canonical_json::CanonicalJsonValue;

use crate::config::FederationSection;
use crate::events::old_keys::OldVerifyKey;
use crate::events::ServerKey;
use crate::primitives::FutureCache;
pub use client::{FedError, HttpResponse, HttpsClient, Target};
pub use keys::{KeyFetchError, ServerKeys};

/// Remote servers whose keys a shard caches at most.
const KEY_CACHE_CAPACITY: usize = 10_000;

/// A shard's federation machinery.
pub struct Federation {
    pub key: Arc<ServerKey>,
    /// Our retired keys (`old_verify_keys`).
    pub old_keys: Arc<Vec<OldVerifyKey>>,
    pub http: HttpsClient,
    pub resolver: resolve::Resolver,
    notaries: Vec<keys::Notary>,
    key_cache: FutureCache<String, Rc<ServerKeys>, KeyFetchError>,
}

impl Federation {
    /// Builds a shard's federation state. `nameservers` are for SRV
    /// lookups (read once at start: [`dns::system_nameservers`]).
    pub fn new(
        key: Arc<ServerKey>,
        old_keys: Arc<Vec<OldVerifyKey>>,
        tls: Arc<rustls::ClientConfig>,
        cfg: &FederationSection,
        nameservers: Vec<SocketAddr>,
    ) -> Federation {
        let settings = client::ClientSettings {
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            max_response_bytes: cfg.max_response_bytes,
            max_idle_per_destination: cfg.max_idle_per_destination,
            ..client::ClientSettings::default()
        };
        let policy = ip_range::IpPolicy::new(&cfg.deny_ip_ranges, &cfg.allow_ip_ranges);
        Federation {
            key,
            old_keys,
            http: HttpsClient::new(tls, policy, settings),
            resolver: resolve::Resolver::new(nameservers),
            notaries: cfg
                .trusted_key_servers
                .iter()
                .map(keys::Notary::from_config)
                .collect(),
            key_cache: FutureCache::with_ttl(
                "federation_server_keys",
                KEY_CACHE_CAPACITY,
                keys::CACHE_TTL,
                crate::primitives::RealClock::handle(),
            ),
        }
    }

    /// Sends a request signed by us (X-Matrix, with `destination`) to
    /// `destination` and returns the response, whatever its status.
    /// `path` is the full request target (`/_matrix/...?query`), as signed.
    pub async fn request(
        &self,
        destination: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<HttpResponse, FedError> {
        let (content, bytes) = match body {
            Some(v) => {
                let c = CanonicalJsonValue::try_from(v.clone())
                    .map_err(|e| FedError::Sign(e.to_string()))?;
                let b = serde_json::to_vec(v).map_err(|e| FedError::Sign(e.to_string()))?;
                (Some(c), Some(b))
            }
            None => (None, None),
        };
        let auth = x_matrix::sign_request(&self.key, destination, method, path, content)
            .map_err(|e| FedError::Sign(e.to_string()))?;
        self.send_raw(
            destination,
            method,
            path,
            &[("Authorization", &auth)],
            bytes.as_deref(),
            self.http.settings.max_response_bytes,
        )
        .await
    }

    /// [`request`](Self::request), expecting 200 and a JSON body of type `T`.
    pub async fn request_json<T: serde::de::DeserializeOwned>(
        &self,
        destination: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, FedError> {
        let resp = self.request(destination, method, path, body).await?;
        if resp.status != 200 {
            return Err(FedError::Status {
                status: resp.status,
                body: resp.body,
            });
        }
        serde_json::from_slice(&resp.body).map_err(|e| FedError::Invalid(e.to_string()))
    }

    /// An unsigned GET (key endpoints need no signature).
    pub async fn get_unsigned(
        &self,
        destination: &str,
        path: &str,
        max_body: usize,
    ) -> Result<HttpResponse, FedError> {
        self.send_raw(destination, "GET", path, &[], None, max_body)
            .await
    }

    /// Sends exactly what it is given to `destination` (resolved as
    /// discovery says), on a pooled connection when there is one.
    pub async fn send_raw(
        &self,
        destination: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        max_body: usize,
    ) -> Result<HttpResponse, FedError> {
        let target = self.resolver.resolve(&self.http, destination).await?;
        let res = self
            .http
            .send(destination, &target, method, path, headers, body, max_body)
            .await;
        if matches!(
            res,
            Err(FedError::Connect(_) | FedError::Tls(_) | FedError::Resolve(_))
        ) {
            // Resolve afresh next time (DNS or delegation may have moved).
            self.resolver.forget(destination);
        }
        res
    }
}
