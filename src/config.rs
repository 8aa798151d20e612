//! Configuration: a TOML file plus `HEARTH_SECTION__KEY` environment overrides.
//!
//! Loading goes file → `toml::Table` → env overrides applied to the table →
//! typed [`Config`] with `deny_unknown_fields` everywhere, so a typo in the file
//! *or* in an environment variable is rejected at start with the key named
//! (paths come from `serde_path_to_error`). Semantic checks (ports, server name,
//! shard count) run afterwards in [`Config::validate`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override config keys.
pub const ENV_PREFIX: &str = "HEARTH_";
/// Variables with the prefix that are *not* config keys (CLI flags).
const ENV_NOT_KEYS: &[&str] = &["HEARTH_CONFIG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_err(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Matrix server name: the part after `:` in user ids.
    pub server_name: String,
    /// Number of shards (one pinned thread each). Default: online cores.
    #[serde(default)]
    pub shards: Option<usize>,
    /// Pin each shard to its own core.
    #[serde(default = "default_true")]
    pub pin_cores: bool,
    /// `auto` (io_uring, falling back to epoll), `io_uring` (fail without it), or `epoll`.
    #[serde(default)]
    pub io_driver: IoDriver,
    /// Where hearth keeps its state (signing key, embedded PostgreSQL).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub registration: RegistrationSection,
    #[serde(default)]
    pub voip: VoipSection,
    #[serde(default)]
    pub push: PushSection,
    #[serde(default)]
    pub federation: FederationSection,
    #[serde(default)]
    pub well_known: WellKnownSection,
    #[serde(default)]
    pub media: MediaSection,
    /// Synapse's `rc_*` rate limits (`src/ratelimit/config.rs`).
    #[serde(default)]
    pub rate_limits: crate::ratelimit::RateLimitSection,
    /// Per-shard caps on expensive requests (`src/admission.rs`).
    #[serde(default)]
    pub admission: crate::admission::AdmissionSection,
}

/// The content repository (client-server API, "Content repository").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Largest upload in bytes (`m.upload.size`); more is 413 `M_TOO_LARGE`.
    /// Uploads are held in memory while they arrive. Synapse: 50M.
    pub max_upload_size: u64,
    /// Serve the deprecated unauthenticated `/_matrix/media/v3/download` and
    /// `/thumbnail`. Off (the spec's "freeze", Synapse's
    /// `enable_authenticated_media: true`): they answer 404 for media
    /// uploaded while it is off; media uploaded while it was on stays
    /// reachable there.
    pub legacy_unauthenticated: bool,
    /// `POST /media/v1/create` reservations a user may hold unfilled at once.
    pub max_pending_uploads: u32,
    /// How long a reserved `mxc://` URI waits for its content.
    pub unused_expiration_ms: u64,
    /// Images with more pixels than this are not thumbnailed (413).
    pub max_image_pixels: u64,
}

impl Default for MediaSection {
    fn default() -> Self {
        Self {
            max_upload_size: 50 * 1024 * 1024,
            legacy_unauthenticated: false,
            max_pending_uploads: 5,
            unused_expiration_ms: 24 * 60 * 60 * 1000,
            max_image_pixels: 32_000_000,
        }
    }
}

/// Server-server API settings (spec server-server-api; names follow
/// Synapse's `ip_range_blacklist`, `federation_verify_certificates` and
/// `trusted_key_servers`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// CIDR ranges outbound federation never connects to. Default: the
    /// private, loopback, link-local and reserved ranges Synapse denies.
    pub deny_ip_ranges: Vec<String>,
    /// CIDR ranges allowed even though `deny_ip_ranges` covers them (tests
    /// on loopback: `["127.0.0.0/8"]`).
    pub allow_ip_ranges: Vec<String>,
    /// Check peers' TLS certificates against the system's CAs.
    pub verify_peer_tls: bool,
    /// Notaries to fetch remote keys from; empty: straight from the origin.
    pub trusted_key_servers: Vec<TrustedKeyServer>,
    pub connect_timeout_ms: u64,
    /// Whole request (head and body) after the connection is up.
    pub request_timeout_ms: u64,
    /// Largest response body accepted from a peer.
    pub max_response_bytes: usize,
    /// Idle connections kept per destination.
    pub max_idle_per_destination: usize,
    /// Nameservers for SRV lookups (`ip:port`); empty: `/etc/resolv.conf`.
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Outbound: the first wait after a failed transaction; doubled per
    /// failure up to `retry_max_ms`, reset by a success.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for FederationSection {
    fn default() -> Self {
        Self {
            deny_ip_ranges: crate::federation::ip_range::DEFAULT_DENY
                .iter()
                .map(|s| s.to_string())
                .collect(),
            allow_ip_ranges: Vec::new(),
            verify_peer_tls: true,
            trusted_key_servers: Vec::new(),
            connect_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            max_response_bytes: 50 * 1024 * 1024,
            max_idle_per_destination: 4,
            dns_servers: Vec::new(),
            retry_min_ms: 10_000,
            retry_max_ms: 3_600_000,
        }
    }
}

/// A notary (`[[federation.trusted_key_servers]]`). With `verify_keys`
/// its answers must carry its signature by one of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyServer {
    pub server_name: String,
    /// key id (`ed25519:abc`) → unpadded base64 public key.
    #[serde(default)]
    pub verify_keys: BTreeMap<String, String>,
}

/// `/.well-known/matrix/{server,client}` answers on client listeners
/// (spec server-server "Resolving server names", client-server
/// "Well-known URIs"). Unset: 404.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnownSection {
    /// `m.server`: `<delegated_hostname>[:<port>]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `m.homeserver.base_url`, e.g. `https://matrix.example.org`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// Push rule evaluation (`src/push/`). `enabled = false` skips evaluating
/// rules for new events (no counts, no notifications, no pushes): for
/// benchmarks comparing the cost, and for deployments without clients
/// that use notifications.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    pub enabled: bool,
    /// Check `https://` push gateways' certificates against the system's
    /// CAs (as `federation.verify_peer_tls` does for peers); `false` for
    /// tests with self-signed gateways.
    pub verify_gateway_tls: bool,
}

impl Default for PushSection {
    fn default() -> Self {
        PushSection {
            enabled: true,
            verify_gateway_tls: true,
        }
    }
}

/// TURN servers handed to clients by `GET /voip/turnServer` (spec "Voice
/// over IP"). With `turn_shared_secret` the credentials are the TURN REST
/// ones (coturn `use-auth-secret`), else the fixed username and password.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoipSection {
    pub turn_uris: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_shared_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_password: Option<String>,
    /// Lifetime of the credentials (Synapse default: one day).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_user_lifetime_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    #[default]
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    #[serde(default = "default_address")]
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub kind: ListenerKind,
    /// PEM certificate chain: with `tls_private_key`, the listener speaks
    /// TLS (federation listeners must, unless a proxy terminates TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListenerKind {
    #[default]
    Client,
    Federation,
    /// `GET /metrics` (Prometheus) and `GET /health` only; keep it on a
    /// private address.
    Metrics,
}

/// HTTP limits and timeouts; see `http::HttpConfig` for what each protects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub write_timeout_ms: u64,
    pub max_connections_per_shard: usize,
    pub shutdown_grace_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            max_body_bytes: 32 * 1024 * 1024,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            keepalive_timeout_ms: 60_000,
            write_timeout_ms: 30_000,
            max_connections_per_shard: 10_000,
            shutdown_grace_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `postgres://user:pass@host:5432/db`. Unset: hearth runs its own
    /// PostgreSQL cluster under `data_dir/postgres` (the embedded default).
    pub url: Option<String>,
    /// Connections per shard.
    pub pool_size: usize,
    /// Queries queued per shard before callers get a "busy" error.
    pub max_queued: usize,
    /// System user that runs the embedded cluster when hearth runs as root.
    pub run_as: String,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: None,
            pool_size: 4,
            max_queued: 4096,
            run_as: "postgres".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `hearth=debug,info`.
    pub level: String,
    /// One line per request on target `hearth::access`.
    pub access_log: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            access_log: true,
        }
    }
}

/// Who may create accounts through `POST /register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    /// `false`: `/register` answers 403 (admins use `hearth register-user`).
    pub enabled: bool,
    /// A shared secret: when set, registering needs the
    /// `m.login.registration_token` stage with this token (client-server
    /// API, "Token-authenticated registration").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for RegistrationSection {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_true() -> bool {
    true
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./hearth-data")
}
fn default_address() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        address: default_address(),
        port: 8008,
        kind: ListenerKind::Client,
        tls_certificate: None,
        tls_private_key: None,
    }]
}

impl Config {
    /// Load from an optional file plus the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !ENV_NOT_KEYS.contains(&k.as_str()))
            .collect();
        Self::load_with_env(path, &env)
    }

    /// Load from an optional file plus the given `HEARTH_*` variables.
    pub fn load_with_env(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
                p.to_owned(),
            ),
            None => (String::new(), PathBuf::from("<none>")),
        };
        Self::from_toml_str(&text, &origin, env)
    }

    pub fn from_toml_str(
        text: &str,
        origin: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        for (var, value) in env {
            apply_env_override(&mut table, var, value)?;
        }
        let value = toml::Value::Table(table);
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            key_err(
                if key == "." { "<root>".into() } else { key },
                e.into_inner().to_string(),
            )
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if ruma::ServerName::parse(&self.server_name).is_err() {
            return Err(key_err(
                "server_name",
                format!("`{}` is not a valid Matrix server name", self.server_name),
            ));
        }
        if let Some(n) = self.shards {
            if n == 0 || n > 1024 {
                return Err(key_err("shards", "must be between 1 and 1024"));
            }
        }
        if self.listeners.is_empty() {
            return Err(key_err("listeners", "at least one listener is needed"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            for (j, other) in self.listeners.iter().enumerate().skip(i + 1) {
                if l.port != 0 && l.port == other.port && l.address == other.address {
                    return Err(key_err(
                        format!("listeners[{j}].port"),
                        format!("{}:{} is already used by listeners[{i}]", l.address, l.port),
                    ));
                }
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.tls_certificate.is_some() != l.tls_private_key.is_some() {
                return Err(key_err(
                    format!("listeners[{i}]"),
                    "tls_certificate and tls_private_key go together",
                ));
            }
        }
        let f = &self.federation;
        for (key, list) in [
            ("federation.deny_ip_ranges", &f.deny_ip_ranges),
            ("federation.allow_ip_ranges", &f.allow_ip_ranges),
        ] {
            for r in list {
                if crate::federation::ip_range::IpRange::parse(r).is_none() {
                    return Err(key_err(
                        key,
                        format!("`{r}` is not an IP range (a.b.c.d/n)"),
                    ));
                }
            }
        }
        if let Some(s) = &self.well_known.server {
            if ruma::ServerName::parse(s).is_err() {
                return Err(key_err("well_known.server", "not a valid server name"));
            }
        }
        for (i, t) in f.trusted_key_servers.iter().enumerate() {
            if ruma::ServerName::parse(&t.server_name).is_err() {
                return Err(key_err(
                    format!("federation.trusted_key_servers[{i}].server_name"),
                    "not a valid server name",
                ));
            }
        }
        for (key, v) in [
            ("federation.connect_timeout_ms", f.connect_timeout_ms),
            ("federation.request_timeout_ms", f.request_timeout_ms),
            ("federation.max_response_bytes", f.max_response_bytes as u64),
        ] {
            if v == 0 {
                return Err(key_err(key, "must be greater than 0"));
            }
        }
        let h = &self.http;
        for (key, v) in [
            ("http.max_header_bytes", h.max_header_bytes as u64),
            ("http.max_body_bytes", h.max_body_bytes as u64),
            ("http.header_timeout_ms", h.header_timeout_ms),
            ("http.body_timeout_ms", h.body_timeout_ms),
            ("http.keepalive_timeout_ms", h.keepalive_timeout_ms),
            ("http.write_timeout_ms", h.write_timeout_ms),
            (
                "http.max_connections_per_shard",
                h.max_connections_per_shard as u64,
            ),
        ] {
            if v == 0 {
                return Err(key_err(key, "must be greater than 0"));
            }
        }
        if h.max_header_bytes < 1024 {
            return Err(key_err("http.max_header_bytes", "must be at least 1024"));
        }
        let m = &self.media;
        if m.max_upload_size == 0 || m.max_upload_size > 1 << 30 {
            return Err(key_err(
                "media.max_upload_size",
                "must be between 1 and 1073741824 (1 GiB)",
            ));
        }
        if m.max_pending_uploads == 0 || m.unused_expiration_ms == 0 || m.max_image_pixels == 0 {
            return Err(key_err(
                "media",
                "max_pending_uploads, unused_expiration_ms and max_image_pixels must be greater than 0",
            ));
        }
        if self.database.pool_size == 0 || self.database.pool_size > 64 {
            return Err(key_err("database.pool_size", "must be between 1 and 64"));
        }
        if self.database.max_queued == 0 {
            return Err(key_err("database.max_queued", "must be greater than 0"));
        }
        if let Some(url) = &self.database.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(key_err(
                    "database.url",
                    "must start with postgres:// or postgresql://",
                ));
            }
        }
        if let Some(token) = &self.registration.token {
            // The spec's grammar for registration tokens: opaque identifier,
            // at most 64 characters.
            let opaque = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
            if token.is_empty() || token.len() > 64 || !token.chars().all(opaque) {
                return Err(key_err(
                    "registration.token",
                    "must be 1 to 64 characters of A-Z a-z 0-9 - . _ ~",
                ));
            }
        }
        self.rate_limits
            .validate()
            .map_err(|(key, message)| key_err(key, message))?;
        self.admission
            .validate()
            .map_err(|(key, message)| key_err(key, message))?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(key_err(
                "log.level",
                format!("`{}` is not a valid log filter", self.log.level),
            ));
        }
        Ok(())
    }

    /// The shard count in force: configured, else the cores this process may use.
    pub fn shard_count(&self) -> usize {
        self.shards.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    /// The effective configuration as TOML (for `hearth check-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `HEARTH_LOG__FORMAT=json` sets `log.format`; `HEARTH_SERVER_NAME=x` sets
/// `server_name`; `HEARTH_LISTENERS__0__PORT=8080` indexes into arrays.
/// Values are read as TOML values (`8080`, `true`, `"x"`), falling back to a
/// plain string, so `HEARTH_SERVER_NAME=example.org` needs no quotes.
fn apply_env_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let rest = var.strip_prefix(ENV_PREFIX).unwrap_or(var);
    let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_err("empty key segment".into()));
    }
    set_path(table, &path, parse_env_value(raw)).map_err(env_err)
}

/// Set `path` inside `table`, creating tables/arrays on the way.
fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (first, rest) = match path.split_first() {
        Some(x) => x,
        None => return Err("empty key".into()),
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let next_is_index = rest[0].parse::<usize>().is_ok();
    let slot = table.entry(first.clone()).or_insert_with(|| {
        if next_is_index {
            toml::Value::Array(Vec::new())
        } else {
            toml::Value::Table(toml::Table::new())
        }
    });
    set_in_value(slot, rest, value)
}

fn set_in_value(slot: &mut toml::Value, path: &[String], value: toml::Value) -> Result<(), String> {
    match slot {
        toml::Value::Table(t) => set_path(t, path, value),
        toml::Value::Array(a) => {
            let (seg, rest) = match path.split_first() {
                Some(x) => x,
                None => return Err("empty key".into()),
            };
            let idx: usize = seg
                .parse()
                .map_err(|_| format!("`{seg}` must be an array index"))?;
            if idx > a.len() {
                return Err(format!("array index {idx} skips entries"));
            }
            if idx == a.len() {
                a.push(toml::Value::Table(toml::Table::new()));
            }
            if rest.is_empty() {
                a[idx] = value;
                Ok(())
            } else {
                set_in_value(&mut a[idx], rest, value)
            }
        }
        _ => Err(format!("`{}` is inside a plain value", path[0])),
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml_str(text, Path::new("test.toml"), &env)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load("server_name = \"example.org\"", &[]).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].port, 8008);
        assert_eq!(c.io_driver, IoDriver::Auto);
        assert!(c.database.url.is_none());
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn env_overrides_nested_and_top_level_keys() {
        let c = load(
            "server_name = \"a.org\"\n[[listeners]]\nport = 1\n",
            &[
                ("HEARTH_SERVER_NAME", "b.org"),
                ("HEARTH_LOG__FORMAT", "json"),
                ("HEARTH_LISTENERS__0__PORT", "9000"),
                ("HEARTH_LISTENERS__1__PORT", "9001"),
                ("HEARTH_LISTENERS__1__KIND", "federation"),
                ("HEARTH_SHARDS", "3"),
                ("HEARTH_DATABASE__URL", "postgres://u@h/db"),
            ],
        )
        .unwrap();
        assert_eq!(c.server_name, "b.org");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.listeners[0].port, 9000);
        assert_eq!(c.listeners[1].kind, ListenerKind::Federation);
        assert_eq!(c.shards, Some(3));
        assert_eq!(c.database.url.as_deref(), Some("postgres://u@h/db"));
        let c = load(
            "server_name = \"a.org\"\n[[listeners]]\nport = 1\n[[listeners]]\nport = 9\nkind = \"metrics\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.listeners[1].kind, ListenerKind::Metrics);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load("server_name = \"a.org\"\n[log]\nformatt = \"json\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("log"), "{e}");
        assert!(e.to_string().contains("formatt"), "{e}");
        let e = load("server_name = \"a.org\"", &[("HEARTH_HTTP__NOPE", "1")]).unwrap_err();
        assert!(
            e.to_string().contains("NOPE") || e.to_string().contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = load("server_name = \"a.org\"\nshards = \"many\"", &[]).unwrap_err();
        assert!(e.to_string().contains("shards"), "{e}");
        let e = load("server_name = \"a.org\"\nshards = 0", &[]).unwrap_err();
        assert!(e.to_string().contains("shards"), "{e}");
        let e = load("server_name = \"not a name!\"", &[]).unwrap_err();
        assert!(e.to_string().contains("server_name"), "{e}");
        let e = load("server_name = \"a.org\"\nio_driver = \"kqueue\"", &[]).unwrap_err();
        assert!(e.to_string().contains("io_driver"), "{e}");
        let e = load(
            "server_name = \"a.org\"\n[[listeners]]\nport = 70000\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("listeners[0].port"), "{e}");
        let e = load(
            "server_name = \"a.org\"\n[database]\nurl = \"mysql://x\"",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("database.url"), "{e}");
    }

    #[test]
    fn registration_section() {
        let c = load("server_name = \"a.org\"", &[]).unwrap();
        assert!(c.registration.enabled);
        assert!(c.registration.token.is_none());
        let c = load(
            "server_name = \"a.org\"\n[registration]\nenabled = false\n",
            &[("HEARTH_REGISTRATION__TOKEN", "s3cret_token")],
        )
        .unwrap();
        assert!(!c.registration.enabled);
        assert_eq!(c.registration.token.as_deref(), Some("s3cret_token"));
        let again = load(&c.to_toml(), &[]).unwrap();
        assert_eq!(again.registration.token.as_deref(), Some("s3cret_token"));
        for bad in ["", "has space", &"x".repeat(65)] {
            let text = format!("server_name = \"a.org\"\n[registration]\ntoken = \"{bad}\"\n");
            let e = load(&text, &[]).unwrap_err();
            assert!(e.to_string().contains("registration.token"), "{e}");
        }
        let e = load(
            "server_name = \"a.org\"\n[registration]\nenable = true\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("enable"), "{e}");
    }

    #[test]
    fn media_section() {
        let c = load("server_name = \"a.org\"", &[]).unwrap();
        assert_eq!(c.media.max_upload_size, 50 * 1024 * 1024);
        assert!(!c.media.legacy_unauthenticated);
        let c = load(
            "server_name = \"a.org\"",
            &[("HEARTH_MEDIA__LEGACY_UNAUTHENTICATED", "true")],
        )
        .unwrap();
        assert!(c.media.legacy_unauthenticated);
        let e = load(
            "server_name = \"a.org\"\n[media]\nmax_upload_size = 0\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("media.max_upload_size"), "{e}");
    }

    #[test]
    fn missing_server_name_is_named() {
        let e = load("", &[]).unwrap_err();
        assert!(e.to_string().contains("server_name"), "{e}");
    }

    #[test]
    fn rendered_config_round_trips() {
        let c = load("server_name = \"a.org\"", &[]).unwrap();
        let again = load(&c.to_toml(), &[]).unwrap();
        assert_eq!(again.server_name, "a.org");
    }
}
