//! Reading and changing a user's push rules: the rule set lives in the
//! user's `m.push_rules` global account data, written on the user's shard
//! through [`account_data::update`], so a change is durable before it is
//! acknowledged and reaches the user's `/sync` as account data (spec "Push
//! Rules": clients receive the rule set that way).
//!
//! A change is read-modify-write of the whole set; the steps await the
//! database, so two changes of one user could interleave and one be lost.
//! They are serialised by a lock local to the user's shard (one per shard:
//! rule changes are rare, a per-user map would buy nothing).

use std::rc::Rc;

use futures_util::lock::Mutex;
use ruma::push::Ruleset;
use ruma::{OwnedUserId, UserId};

use crate::db::Pool;
use crate::ephemeral::account_data::{self, Update};
use crate::ephemeral::{on_shard, EphError};
use crate::mesh::{shard_for_user, BroadcastScope, MeshEndpoint};

use super::rules::{self, Edit, RuleError, ACCOUNT_DATA_TYPE};

/// Why reading or changing rules failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Store(#[from] EphError),
}

thread_local! {
    static CHANGE_LOCK: Rc<Mutex<()>> = Rc::new(Mutex::new(()));
}

/// The user's rule set now (stored changes merged with the defaults).
pub async fn load(db: &Pool, user: &UserId) -> Result<Ruleset, EphError> {
    let stored = account_data::get(db, user, None, ACCOUNT_DATA_TYPE).await?;
    Ok(rules::effective(user, stored.as_ref()))
}

/// Applies `edit` to `user`'s rules on the user's shard; returns after the
/// new set is committed and announced.
pub async fn change(mesh: &MeshEndpoint, user: OwnedUserId, edit: Edit) -> Result<(), PushError> {
    let target = shard_for_user(&user, mesh.n_shards());
    let outcome = on_shard(mesh, target, move |state| async move {
        let lock = CHANGE_LOCK.with(Rc::clone);
        let _held = lock.lock().await;
        let mut set = load(&state.db, &user).await?;
        if let Err(e) = rules::apply(&mut set, edit) {
            return Ok(Err(e));
        }
        let content = rules::to_account_data(&set);
        let user_id = user.clone();
        account_data::update(
            &state.mesh,
            user,
            None,
            Update::Replace {
                kind: ACCOUNT_DATA_TYPE.to_owned(),
                content,
            },
        )
        .await?;
        forget_everywhere(&state.mesh, &user_id).await;
        Ok(Ok(()))
    })
    .await?;
    Ok(outcome?)
}

/// Every shard drops its cached copy of the user's rules (rooms are
/// evaluated on their owner shards) before the change is acknowledged.
async fn forget_everywhere(mesh: &MeshEndpoint, user: &OwnedUserId) {
    let user = user.clone();
    let results = mesh
        .broadcast_wait(BroadcastScope::All, move || {
            let user = user.clone();
            async move { super::engine::forget_rules(&user) }
        })
        .await;
    for (shard, r) in results {
        if let Err(e) = r {
            tracing::warn!(shard, error = %e, "push rule cache not invalidated");
        }
    }
}
