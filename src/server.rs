//! Process orchestration: listeners, shards, signals, graceful shutdown.
//!
//! The main thread binds every listener once per shard (`SO_REUSEPORT`), starts
//! the shards, then only waits for SIGINT/SIGTERM. It never serves requests.

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{Config, ListenerKind};
use crate::db::setup as db_setup;
use crate::db::{ConnectConfig, GroupCommit, GroupCommitConfig, Pool, PoolConfig};
use crate::events::ServerKey;
use crate::http::{self, HttpConfig};
use crate::mesh::{Mesh, MeshEndpoint};
use crate::rooms::{self, Rooms};
use crate::shard::{self, ShardInfo, ShardOptions, ShardStart};
use crate::shard_state::{self, ShardState};

/// Jobs in flight per ordered shard pair before senders wait (backpressure).
const MESH_RING_CAPACITY: usize = 1024;

/// Federation pieces built once on the main thread (file reads) and
/// shared by every shard.
#[derive(Clone)]
struct FedShared {
    old_keys: Arc<Vec<crate::events::old_keys::OldVerifyKey>>,
    tls: Arc<rustls::ClientConfig>,
    /// For `https://` push gateways.
    push_tls: Arc<rustls::ClientConfig>,
    http_pushers: Arc<crate::push::gateway::HttpPushers>,
    nameservers: Vec<SocketAddr>,
}

/// Everything one shard owns, moved to its thread at start.
pub struct ShardPayload {
    listeners: Vec<(ListenerKind, TcpListener, Option<Arc<rustls::ServerConfig>>)>,
    mesh: MeshEndpoint,
}

impl From<&crate::config::HttpSection> for HttpConfig {
    fn from(h: &crate::config::HttpSection) -> Self {
        HttpConfig {
            max_header_bytes: h.max_header_bytes,
            max_body_bytes: h.max_body_bytes,
            header_timeout: Duration::from_millis(h.header_timeout_ms),
            body_timeout: Duration::from_millis(h.body_timeout_ms),
            keepalive_timeout: Duration::from_millis(h.keepalive_timeout_ms),
            write_timeout: Duration::from_millis(h.write_timeout_ms),
            max_connections: h.max_connections_per_shard,
            shutdown_grace: Duration::from_millis(h.shutdown_grace_ms),
        }
    }
}

/// Run hearth until SIGINT/SIGTERM; returns after a graceful shutdown.
pub fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let n = config.shard_count();

    // Every connection is a descriptor: make room before accepting any.
    shard::limits::raise_nofile((n * config.http.max_connections_per_shard) as u64 + 1024);
    shard::limits::check_somaxconn(4096);

    // Signals first, so a SIGTERM during start-up is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;

    let mut per_shard: Vec<ShardPayload> = Mesh::new(n, MESH_RING_CAPACITY)
        .into_iter()
        .map(|mesh| ShardPayload {
            listeners: Vec::new(),
            mesh,
        })
        .collect();
    let mut bound: Vec<(ListenerKind, SocketAddr, bool)> = Vec::new();
    for l in &config.listeners {
        let addr = SocketAddr::new(l.address, l.port);
        // Certificates are read before binding: a bad file fails the start.
        let tls = match (&l.tls_certificate, &l.tls_private_key) {
            (Some(cert), Some(key)) => Some(
                http::tls::server_config(cert, key)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("TLS for the {addr} listener"))?,
            ),
            _ => None,
        };
        let socks = shard::listener::bind_reuseport(addr, n)
            .with_context(|| format!("binding {addr} ({:?} listener)", l.kind))?;
        bound.push((l.kind, socks[0].local_addr()?, tls.is_some()));
        for (payload, sock) in per_shard.iter_mut().zip(socks) {
            payload.listeners.push((l.kind, sock, tls.clone()));
        }
    }

    // Listeners are bound first so a taken port fails fast; connections
    // wait in the backlog until shards accept. Then the database: shards
    // start only once it is up and migrated. The embedded cluster lives as
    // long as `database`.
    let database = db_setup::prepare(&config).context("preparing the database")?;
    let key = Arc::new(
        ServerKey::load_or_create(&config.data_dir, &config.server_name)
            .context("loading the server signing key")?,
    );
    let old_keys = Arc::new(
        crate::events::old_keys::load(&config.data_dir)
            .context("loading the retired signing keys")?,
    );
    let fed_tls = crate::federation::tls::client_config(config.federation.verify_peer_tls)
        .map_err(anyhow::Error::msg)
        .context("federation TLS client")?;
    let push_tls = if config.push.verify_gateway_tls == config.federation.verify_peer_tls {
        fed_tls.clone()
    } else {
        crate::federation::tls::client_config(config.push.verify_gateway_tls)
            .map_err(anyhow::Error::msg)
            .context("push gateway TLS client")?
    };
    let nameservers = if config.federation.dns_servers.is_empty() {
        crate::federation::dns::system_nameservers()
    } else {
        config.federation.dns_servers.clone()
    };
    let fed = FedShared {
        old_keys,
        tls: fed_tls,
        push_tls,
        http_pushers: Arc::default(),
        nameservers,
    };
    let db = (database.connect.clone(), database.pool.clone(), key, fed);

    let opts = ShardOptions {
        io_driver: config.io_driver,
        pin_cores: config.pin_cores,
    };
    let cfg = config.clone();
    let shards = shard::start(per_shard, &opts, move |start| {
        shard_main(start, cfg.clone(), db.clone())
    })
    .context("starting shards")?;

    log_driver_summary(&shards.infos);
    for (kind, addr, tls) in &bound {
        let scheme = if *tls { "https" } else { "http" };
        tracing::info!(kind = ?kind, "listening on {scheme}://{addr}");
    }

    let mut forever = signals.forever();
    let sig = forever.next();
    tracing::info!(signal = ?sig, "shutting down: no new connections, finishing requests in flight");
    shards.stop_all();
    // A second signal aborts at once, as operators expect.
    std::thread::spawn(move || {
        if signals_again().is_some() {
            std::process::exit(1);
        }
    });
    let grace = Duration::from_millis(config.http.shutdown_grace_ms) + Duration::from_secs(2);
    if !shards.join(grace) {
        tracing::warn!("some shards did not finish within the shutdown deadline");
    }
    database.shutdown();
    tracing::info!("stopped");
    Ok(())
}

fn signals_again() -> Option<i32> {
    Signals::new([SIGINT, SIGTERM]).ok()?.forever().next()
}

/// Say once, at start, which IO driver the shards run on.
fn log_driver_summary(infos: &[ShardInfo]) {
    let uring = infos
        .iter()
        .filter(|i| i.driver == shard::DriverKind::IoUring)
        .count();
    let cores: Vec<String> = infos
        .iter()
        .map(|i| i.core.map_or("-".into(), |c| c.to_string()))
        .collect();
    if uring == infos.len() {
        tracing::info!(shards = infos.len(), cores = %cores.join(","), "io driver: io_uring");
    } else {
        let reason = infos
            .iter()
            .find_map(|i| i.fallback_reason.clone())
            .unwrap_or_else(|| "configured io_driver = \"epoll\"".into());
        tracing::info!(
            shards = infos.len(),
            epoll = infos.len() - uring,
            cores = %cores.join(","),
            %reason,
            "io driver: epoll"
        );
    }
}

async fn shard_main(
    start: ShardStart<ShardPayload>,
    config: Arc<Config>,
    (connect, pool_cfg, key, fed): (ConnectConfig, PoolConfig, Arc<ServerKey>, FedShared),
) {
    let ShardStart {
        info,
        stop,
        payload,
    } = start;
    let id = info.id;
    let http_cfg = Rc::new(HttpConfig::from(&config.http));
    let ShardPayload { listeners, mesh } = payload;
    let db = match Pool::connect(connect, pool_cfg).await {
        Ok(p) => p,
        Err(e) => {
            // Migrations just connected from the main thread, so this is rare
            // (e.g. max_connections reached); a shard without a database
            // cannot serve, and a half-up server is worse than none.
            tracing::error!(shard = id, error = %e, "cannot connect to PostgreSQL");
            std::process::exit(1);
        }
    };
    let writer = GroupCommit::new(db.clone(), GroupCommitConfig::default());
    let n = config.shard_count();
    let (stream, notifier) = match crate::stream::open(&db, id, n).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot load stream positions");
            std::process::exit(1);
        }
    };
    let admission = crate::admission::Admission::new(&config.admission);
    let rooms = match Rooms::open(
        id,
        n,
        db.clone(),
        writer.clone(),
        key.clone(),
        stream.clone(),
    )
    .await
    {
        Ok(r) => Rc::new(
            r.with_resolution_gate(
                admission
                    .gate(crate::admission::Work::StateResolution)
                    .clone(),
            ),
        ),
        Err(e) => {
            tracing::error!(shard = id, error = %e, "cannot open the room service");
            std::process::exit(1);
        }
    };
    rooms::install(rooms.clone());
    let federation = Rc::new(crate::federation::Federation::new(
        key.clone(),
        fed.old_keys,
        fed.tls,
        &config.federation,
        fed.nameservers,
    ));
    let config_limits = config.rate_limits.clone();
    let state = Rc::new(ShardState {
        info,
        config,
        mesh: Rc::new(mesh),
        db,
        writer,
        key,
        rooms,
        auth: crate::auth::AuthState::default(),
        stream: stream.clone(),
        notifier,
        federation,
        push_tls: fed.push_tls,
        http_pushers: fed.http_pushers,
        limits: crate::ratelimit::Limits::new(&config_limits),
        admission,
    });
    shard_state::install(state.clone());
    // Only now may jobs from other shards run here: they reach this shard's
    // state (rooms, auth caches) through the thread-locals set just above.
    // Until then peers' jobs wait in their rings (backpressure, not errors).
    state.mesh.spawn_receiver();
    monoio::spawn(stream.clone().run_announcer(state.mesh.clone()));
    monoio::spawn(crate::shard::allocator::run_collector());
    {
        // Transactions answered before a crash and not yet applied.
        let state = state.clone();
        monoio::spawn(async move {
            // Partial-state rooms first: staged PDUs of one are applied
            // as of a partial room (`rooms::partial`).
            match crate::federation::resync::resume(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(shard = id, rooms = n, "resuming partial-state resyncs"),
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "cannot resume partial-state resyncs")
                }
            }
            match crate::federation::ingest::resume(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(shard = id, rooms = n, "resuming staged federation PDUs"),
                Err(e) => tracing::error!(shard = id, error = %e, "cannot resume staged PDUs"),
            }
            // Remote device list updates received but not yet applied.
            match crate::federation::device_lists::resume(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(shard = id, users = n, "resuming remote device lists"),
                Err(e) => tracing::error!(shard = id, error = %e, "cannot resume device lists"),
            }
            // Events committed but not yet delivered to other servers.
            match crate::federation::sender::resume(&state).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(shard = id, destinations = n, "resuming outbound federation")
                }
                Err(e) => {
                    tracing::error!(shard = id, error = %e, "cannot resume outbound federation")
                }
            }
        });
    }
    if id == 0 {
        // Database-wide housekeeping runs once, on shard 0.
        monoio::spawn(crate::rooms::txn::run_expiry(state.db.clone()));
    }
    let shutdown = http::Shutdown::new();
    {
        let shutdown = shutdown.clone();
        let notifier = state.notifier.clone();
        monoio::spawn(async move {
            stop.wait().await;
            shutdown.trigger();
            notifier.shutdown();
        });
    }
    let client_router = Rc::new(crate::api::client_router(&state.config));
    let federation_router = Rc::new(crate::api::federation_router());
    let metrics_router = Rc::new(crate::api::metrics_router());
    let mut serving = Vec::new();
    for (kind, std_listener, tls) in listeners {
        let listener = match monoio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(shard = id, error = %e, "cannot register listener with the runtime");
                continue;
            }
        };
        let router = match kind {
            ListenerKind::Client => client_router.clone(),
            ListenerKind::Federation => federation_router.clone(),
            ListenerKind::Metrics => metrics_router.clone(),
        };
        // Client connections move to their user's shard (`/sync` asks).
        let handoff = (kind == ListenerKind::Client)
            .then(|| Rc::new(MeshHandoff(Rc::clone(&state.mesh))) as Rc<dyn http::Handoff>);
        serving.push(monoio::spawn(http::serve_with(
            listener,
            router,
            state.clone(),
            http_cfg.clone(),
            shutdown.clone(),
            tls,
            handoff,
        )));
    }
    for s in serving {
        s.await;
    }
    // Peers' pending submits to this shard now fail fast instead of hanging.
    state.mesh.close();
    state.stream.release_all();
    shard_state::uninstall();
}

/// Moves HTTP connections between shards over the mesh.
struct MeshHandoff(Rc<MeshEndpoint>);

impl http::Handoff for MeshHandoff {
    fn here(&self) -> usize {
        self.0.shard_id()
    }

    fn send(
        &self,
        shard: usize,
        conn: http::Moving,
    ) -> futures_util::future::LocalBoxFuture<'static, bool> {
        let mesh = Rc::clone(&self.0);
        Box::pin(async move {
            mesh.send_to(shard, move || async move { http::adopt(conn) })
                .await
                .is_ok()
        })
    }
}
