-- Access tokens are stored as their SHA-256 (hex), never as themselves: a
-- read of this table gives no usable token. Existing tokens are hashed in
-- place, so sessions survive the upgrade.
ALTER TABLE access_tokens RENAME COLUMN token TO token_hash;
UPDATE access_tokens SET token_hash = encode(sha256(convert_to(token_hash, 'UTF8')), 'hex');
