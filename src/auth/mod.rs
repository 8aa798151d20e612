//! Accounts and authentication: access tokens (with a per-shard cache kept
//! coherent over the mesh), password hashing off the shards, user-interactive
//! auth sessions, and the account/device/profile store.
//!
//! Endpoints call [`require_user`] to learn who is asking.

pub mod admin;
pub mod cli;
mod error;
pub mod openid;
pub mod password;
pub mod registration_tokens;
pub mod secret;
pub mod store;
pub mod tokens;
pub mod username;

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ruma::OwnedUserId;

use crate::http::Request;
use crate::mesh::{shard_for_user, BroadcastScope};
use crate::primitives::{FutureCache, RealClock};
use crate::shard_state::{current_shard, Here, ShardState};

pub use error::AuthError;

/// Who made a request: the owner of a valid access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub is_guest: bool,
}

/// Tokens validated per shard are remembered this long at most; logout and
/// friends also invalidate them on every shard at once.
const TOKEN_TTL: Duration = Duration::from_secs(600);
const TOKEN_CACHE_SIZE: usize = 50_000;

/// Per-shard authentication state (lives in [`ShardState`]).
pub struct AuthState {
    tokens: FutureCache<String, Requester, AuthError>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            tokens: FutureCache::with_ttl(
                "access_tokens",
                TOKEN_CACHE_SIZE,
                TOKEN_TTL,
                RealClock::handle(),
            ),
        }
    }
}

impl AuthState {
    /// Whether this shard has `token` cached (tests, diagnostics).
    pub fn is_cached(&self, token: &str) -> bool {
        self.tokens
            .get_if_present(&tokens::hash_token(token))
            .is_some()
    }

    fn invalidate(&self, token_hashes: &[String]) {
        for t in token_hashes {
            self.tokens.invalidate(t);
        }
    }
}

/// The requester of an authenticated endpoint (client-server API, "Using
/// access tokens"): 401 `M_MISSING_TOKEN` without a token, 401
/// `M_UNKNOWN_TOKEN` for an unknown, revoked or deactivated one.
pub async fn require_user(state: &ShardState, req: &Request) -> Result<Requester, AuthError> {
    let token = match req.access_token() {
        Some(t) if !t.is_empty() => t.into_owned(),
        _ => return Err(AuthError::MissingToken),
    };
    // Cached and looked up by hash: no shard keeps a usable token either.
    let hash = tokens::hash_token(&token);
    let pool = state.db.clone();
    let key = hash.clone();
    let r = state
        .auth
        .tokens
        .get_or_load(key, move || async move {
            store::lookup_token(&pool, &hash).await
        })
        .await?;
    Ok(r)
}

/// Forget `tokens` (hashes, as the deletes return them) in every shard's
/// cache, returning once all have. Called
/// after the tokens were deleted from the database, so a load racing with
/// this either read the deletion or is detached by the invalidation.
pub async fn invalidate_tokens(state: &ShardState, tokens: Vec<String>) {
    if tokens.is_empty() {
        return;
    }
    let tokens = Arc::new(tokens);
    let results = state
        .mesh
        .broadcast_wait(BroadcastScope::All, move || {
            let tokens = tokens.clone();
            async move {
                if let Some(s) = current_shard() {
                    s.auth.invalidate(&tokens);
                }
            }
        })
        .await;
    for (shard, r) in results {
        if let Err(e) = r {
            // Only during shutdown; the TTL bounds the staleness anyway.
            tracing::warn!(shard, error = %e, "could not invalidate cached tokens");
        }
    }
}

/// Run `f` on the shard owning `user_id` with that shard's state: writes of
/// one user's devices and tokens happen in one place.
pub async fn on_user_shard<F, Fut, T>(
    state: &ShardState,
    user_id: &ruma::UserId,
    f: F,
) -> Result<T, AuthError>
where
    F: FnOnce(Rc<ShardState>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, AuthError>> + 'static,
    T: Send + 'static,
{
    let target = shard_for_user(user_id, state.mesh.n_shards());
    crate::shard_state::on_shard(&state.mesh, target, Here::Spawn, f)
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?
}
