//! Per-shard application state and how to reach another shard's.
//!
//! Below all domain code: handlers and services take a [`ShardState`], mesh
//! jobs find theirs with [`current_shard`], and [`on_shard`] runs a closure
//! on a given shard. Process orchestration (`server.rs`) builds the
//! state and [`install`]s it; domain modules never import orchestration.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::db::{GroupCommit, Pool};
use crate::events::ServerKey;
use crate::mesh::{MeshEndpoint, MeshError};
use crate::rooms::Rooms;
use crate::shard::ShardInfo;
use crate::stream::{Notifier, StreamWriter};

/// Per-shard application state handed to every request handler. Lives on one
/// shard only (`Rc`), so handlers read it without locks.
pub struct ShardState {
    pub info: ShardInfo,
    pub config: Arc<Config>,
    /// This shard's end of the mesh: `submit_to` other shards, broadcast.
    pub mesh: Rc<MeshEndpoint>,
    /// This shard's own small pool of PostgreSQL connections.
    pub db: Pool,
    /// This shard's group-commit writer: persistence of many concurrent
    /// requests in one transaction per flush, each answered after COMMIT.
    pub writer: GroupCommit,
    /// The server's signing key, loaded once at start, shared by shards.
    pub key: Arc<ServerKey>,
    /// This shard's room service (also reachable as `rooms::local()` from
    /// mesh jobs).
    pub rooms: Rc<Rooms>,
    /// Access-token cache; invalidated on every shard over the mesh.
    pub auth: crate::auth::AuthState,
    /// This shard's stream writer (positions, announcements).
    pub stream: Rc<StreamWriter>,
    /// What this shard knows of every stream; wakes parked syncs.
    pub notifier: Rc<Notifier>,
    /// Outbound federation (client, discovery) and remote keys.
    pub federation: Rc<crate::federation::Federation>,
    /// TLS client config for `https://` push gateways (federation's, or
    /// one without certificate checks under `push.verify_gateway_tls = false`).
    pub push_tls: Arc<rustls::ClientConfig>,
    /// Whether any HTTP pusher exists (one per server, shared by shards).
    pub http_pushers: Arc<crate::push::gateway::HttpPushers>,
    /// This shard's rate-limit buckets (`ratelimit`: which are consulted
    /// where).
    pub limits: crate::ratelimit::Limits,
    /// This shard's caps on expensive requests (`admission`).
    pub admission: crate::admission::Admission,
}

thread_local! {
    /// This thread's shard state, so mesh jobs (closures sent from other
    /// shards, which cannot carry an `Rc`) reach the shard they run on.
    static CURRENT_SHARD: std::cell::RefCell<Option<Rc<ShardState>>> =
        const { std::cell::RefCell::new(None) };
}

/// The state of the shard running on this thread (`None` off the shards).
pub fn current_shard() -> Option<Rc<ShardState>> {
    CURRENT_SHARD.with(|c| c.borrow().clone())
}

/// Makes `state` this thread's shard state (before mesh jobs may run here).
pub fn install(state: Rc<ShardState>) {
    CURRENT_SHARD.with(|c| *c.borrow_mut() = Some(state));
}

/// Drops this thread's shard state at shard exit.
pub fn uninstall() {
    CURRENT_SHARD.with(|c| c.borrow_mut().take());
}

/// What to do when the target of [`on_shard`] is the calling shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Here {
    /// Run `f` inline: no task, no hop (reads, e.g. `/sync` on the user's
    /// own shard). Dropping the caller drops the work.
    Inline,
    /// Run `f` as its own task, as a remote shard would: it completes even
    /// if the caller (a request whose client went away) is dropped. Writes.
    Spawn,
}

/// Why [`on_shard`] could not run the closure.
#[derive(Debug, thiserror::Error)]
pub enum OnShardError {
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("shard state not available")]
    NoState,
}

impl crate::error::Retryable for OnShardError {
    fn retryable(&self) -> bool {
        match self {
            OnShardError::Mesh(e) => e.retryable(),
            // A shard without its state is starting or stopping.
            OnShardError::NoState => true,
        }
    }
}

/// Runs `f` on shard `target` with that shard's state, over the mesh. The
/// one way code reaches another shard's state; callers map
/// [`OnShardError`] into their own error type.
pub async fn on_shard<F, Fut, T>(
    mesh: &MeshEndpoint,
    target: usize,
    here: Here,
    f: F,
) -> Result<T, OnShardError>
where
    F: FnOnce(Rc<ShardState>) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    on_shard_with(mesh, target, here, current_shard, f).await
}

/// [`on_shard`] for a service that has its own thread-local (`get` finds
/// it on the target shard): the room service runs without a whole
/// [`ShardState`] in the room-core tests, so `rooms::client::on_owner`
/// looks up `rooms::local()` there instead of `current_shard()`.
pub async fn on_shard_with<S, F, Fut, T>(
    mesh: &MeshEndpoint,
    target: usize,
    here: Here,
    get: fn() -> Option<S>,
    f: F,
) -> Result<T, OnShardError>
where
    S: 'static,
    F: FnOnce(S) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    if here == Here::Inline && target == mesh.shard_id() {
        if let Some(s) = get() {
            return Ok(f(s).await);
        }
    }
    mesh.submit_to(target, move || async move {
        match get() {
            Some(s) => Ok(f(s).await),
            None => Err(OnShardError::NoState),
        }
    })
    .await?
}
