//! SQL of cross-signing keys and signatures (schema:
//! `migrations/0012_cross_signing_backup.sql`). Keys are stored as the JSON
//! text uploaded; signatures uploaded later are rows of their own, merged
//! into the objects when they are queried.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::cross_signing::{CrossKey, KeyType, NewSignature};
use super::KeysError;
use crate::db::{Pool, ToSql};

/// Cross-signing keys of `users`, by user.
pub async fn keys_of(
    db: &Pool,
    users: &[String],
) -> Result<HashMap<String, Vec<CrossKey>>, KeysError> {
    let rows = db
        .query(
            "SELECT user_id, key_type, public_key, key_json FROM e2e_cross_signing_keys \
             WHERE user_id = ANY($1)",
            &[&users],
        )
        .await?;
    let mut out: HashMap<String, Vec<CrossKey>> = HashMap::new();
    for r in rows {
        let kind: String = r.get(1)?;
        let text: String = r.get(3)?;
        // Stored only after validation; a row that no longer parses is skipped.
        let (Some(kind), Ok(Value::Object(json))) =
            (KeyType::parse(&kind), serde_json::from_str::<Value>(&text))
        else {
            continue;
        };
        out.entry(r.get(0)?).or_default().push(CrossKey {
            kind,
            public: r.get(2)?,
            json,
        });
    }
    Ok(out)
}

/// Stores `keys` of `user` (each replaces the user's key of its kind) and
/// records a device list change at `change` (`(stream_shard, stream_pos)`),
/// atomically.
pub async fn store_keys(
    db: &Pool,
    user: &str,
    keys: &[CrossKey],
    now: i64,
    change: (i32, i64),
) -> Result<(), KeysError> {
    let kinds: Vec<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
    let publics: Vec<&str> = keys.iter().map(|k| k.public.as_str()).collect();
    let jsons: Vec<String> = keys
        .iter()
        .map(|k| Value::Object(k.json.clone()).to_string())
        .collect();
    let ins: [&dyn ToSql; 5] = [&user, &kinds, &publics, &jsons, &now];
    let chg: [&dyn ToSql; 3] = [&user, &change.0, &change.1];
    db.pipeline_transaction(&[
        (
            "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json, updated_ts) \
             SELECT $1, t, p, j, $5 FROM unnest($2::text[], $3::text[], $4::text[]) AS u(t, p, j) \
             ON CONFLICT (user_id, key_type) DO UPDATE \
             SET public_key = excluded.public_key, key_json = excluded.key_json, \
                 updated_ts = excluded.updated_ts",
            &ins,
        ),
        (
            "INSERT INTO e2e_device_list_changes (user_id, stream_shard, stream_pos) \
             VALUES ($1, $2, $3)",
            &chg,
        ),
    ])
    .await?;
    Ok(())
}

/// Whether one of `ids` is a device id of `user` (spec: a cross-signing
/// public key must not be one, 403).
pub async fn clashes_with_device(db: &Pool, user: &str, ids: &[&str]) -> Result<bool, KeysError> {
    let row = db
        .query_opt(
            "SELECT 1 FROM devices WHERE user_id = $1 AND device_id = ANY($2) LIMIT 1",
            &[&user, &ids],
        )
        .await?;
    Ok(row.is_some())
}

/// Device keys of `user`'s devices, by device id.
pub async fn device_keys_of(
    db: &Pool,
    user: &str,
) -> Result<HashMap<String, Map<String, Value>>, KeysError> {
    let rows = db
        .query(
            "SELECT device_id, key_json FROM e2e_device_keys WHERE user_id = $1",
            &[&user],
        )
        .await?;
    let mut out = HashMap::new();
    for r in rows {
        let text: String = r.get(1)?;
        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) {
            out.insert(r.get(0)?, m);
        }
    }
    Ok(out)
}

/// Stores accepted signatures by `signer` and records a device list change
/// for each target user at `pos` of `shard` (visible to everyone for the
/// signer's own keys, to the signer only for other users' keys).
pub async fn store_signatures(
    db: &Pool,
    signer: &str,
    sigs: &[NewSignature],
    shard: i32,
    pos: i64,
) -> Result<(), KeysError> {
    let tu: Vec<&str> = sigs.iter().map(|s| s.target_user.as_str()).collect();
    let tk: Vec<&str> = sigs.iter().map(|s| s.target_key_id.as_str()).collect();
    let sk: Vec<&str> = sigs.iter().map(|s| s.signer_key_id.as_str()).collect();
    let sv: Vec<&str> = sigs.iter().map(|s| s.signature.as_str()).collect();
    // One change row per target user: `visible_to` is the same for all of
    // a user's signatures (the signer's own, or another user's key).
    let mut changed: Vec<(&str, &str)> = Vec::new();
    for s in sigs {
        let vis = s.visible_to.as_deref().unwrap_or("");
        if !changed.iter().any(|(u, _)| *u == s.target_user) {
            changed.push((s.target_user.as_str(), vis));
        }
    }
    let cu: Vec<&str> = changed.iter().map(|c| c.0).collect();
    let cv: Vec<&str> = changed.iter().map(|c| c.1).collect();
    let ins: [&dyn ToSql; 5] = [&tu, &tk, &signer, &sk, &sv];
    let chg: [&dyn ToSql; 4] = [&cu, &cv, &shard, &pos];
    db.pipeline_transaction(&[
        (
            "INSERT INTO e2e_cross_signing_signatures \
               (target_user, target_key_id, signer_user, signer_key_id, signature) \
             SELECT u, k, $3, s, v FROM unnest($1::text[], $2::text[], $4::text[], $5::text[]) \
               AS t(u, k, s, v) \
             ON CONFLICT (target_user, target_key_id, signer_user, signer_key_id) \
             DO UPDATE SET signature = excluded.signature",
            &ins,
        ),
        (
            "INSERT INTO e2e_device_list_changes (user_id, visible_to, stream_shard, stream_pos) \
             SELECT u, NULLIF(v, ''), $3, $4 FROM unnest($1::text[], $2::text[]) AS t(u, v)",
            &chg,
        ),
    ])
    .await?;
    Ok(())
}

/// Signatures on keys of `targets` that `viewer` may see: made by the
/// key's owner, or by `viewer`. `(target_user, target_key_id) ->
/// [(signer_user, signer_key_id, signature)]`.
pub type Signatures = HashMap<(String, String), Vec<(String, String, String)>>;

pub async fn signatures_for(
    db: &Pool,
    targets: &[String],
    viewer: &str,
) -> Result<Signatures, KeysError> {
    let rows = db
        .query(
            "SELECT target_user, target_key_id, signer_user, signer_key_id, signature \
             FROM e2e_cross_signing_signatures \
             WHERE target_user = ANY($1) AND (signer_user = target_user OR signer_user = $2)",
            &[&targets, &viewer],
        )
        .await?;
    let mut out: Signatures = HashMap::new();
    for r in rows {
        out.entry((r.get(0)?, r.get(1)?))
            .or_default()
            .push((r.get(2)?, r.get(3)?, r.get(4)?));
    }
    Ok(out)
}

/// Forgets signatures of `user`'s devices that are gone (deleted, logged
/// out): a device id can be used again by a later login, and an old
/// signature must not show up on the new device's keys.
pub async fn forget_device_signatures(db: &Pool, user: &str) -> Result<(), KeysError> {
    db.execute(
        "DELETE FROM e2e_cross_signing_signatures s WHERE s.target_user = $1 \
           AND NOT EXISTS (SELECT 1 FROM devices d \
                           WHERE d.user_id = $1 AND d.device_id = s.target_key_id) \
           AND NOT EXISTS (SELECT 1 FROM e2e_cross_signing_keys k \
                           WHERE k.user_id = $1 AND k.public_key = s.target_key_id)",
        &[&user],
    )
    .await?;
    Ok(())
}
