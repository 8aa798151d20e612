-- OpenID tokens (client-server "OpenID", server-server "OpenID"): a user
-- proves their identity to a third party, which checks the token with
-- GET /_matrix/federation/v1/openid/userinfo. Stored as SHA-256 hex, like
-- access tokens; they expire after an hour.
CREATE TABLE openid_tokens (
    token_hash text PRIMARY KEY,
    user_id    text NOT NULL,
    expires_ts bigint NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
