//! Remote users' profiles (client-server API "GET /profile/{userId}": the
//! homeserver asks the user's server, server-server API "Querying for
//! information", `GET /query/profile`).

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::UserId;
use serde_json::{Map, Value};

use super::{FedError, Federation};
use crate::auth::store::Profile;

/// Why a remote profile is not known. As Synapse: the remote's 404 is a
/// 404; anything else (unreachable, an error, a malformed answer) is the
/// remote's fault, a 502.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile not found")]
    NotFound,
    #[error("failed to fetch profile: {0}")]
    Unreachable(String),
}

/// `user`'s profile (only `field` of it when given) from their server.
pub async fn query(
    fed: &Federation,
    user: &UserId,
    field: Option<&str>,
) -> Result<Profile, ProfileError> {
    let mut path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        utf8_percent_encode(user.as_str(), NON_ALPHANUMERIC)
    );
    if let Some(f) = field {
        path.push_str("&field=");
        path.push_str(f);
    }
    let server = user.server_name().as_str();
    let v: Map<String, Value> = match fed.request_json(server, "GET", &path, None).await {
        Ok(v) => v,
        Err(FedError::Status { status: 404, .. }) => return Err(ProfileError::NotFound),
        Err(e) => return Err(ProfileError::Unreachable(e.to_string())),
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Profile {
        displayname: text("displayname"),
        avatar_url: text("avatar_url"),
    })
}
