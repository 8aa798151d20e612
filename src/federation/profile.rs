//! Remote users' profiles (client-server API "GET /profile/{userId}": the
//! homeserver asks the user's server, server-server API "Querying for
//! information", `GET /query/profile`).

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use ruma::UserId;
use serde_json::{Map, Value};

use super::{FedError, Federation};
use crate::auth::store::Profile;

/// Why a remote profile is not known. As Synapse (`handlers/profile.py`):
/// the remote's 404 and 403 (a server may limit profile lookups) pass
/// through; anything else (unreachable, another error, a malformed
/// answer) is a 502.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile not found")]
    NotFound,
    #[error("the user's server refused the profile lookup")]
    Forbidden,
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
        Err(FedError::Status { status: 403, .. }) => return Err(ProfileError::Forbidden),
        Err(e) => return Err(ProfileError::Unreachable(e.to_string())),
    };
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Profile {
        displayname: text("displayname"),
        avatar_url: text("avatar_url"),
    })
}
