//! What the federation scenarios share: a federation client signing as a
//! simulated remote server, JSON calls to the target's federation API, and
//! a remote user's join through `make_join` → sign → `send_join` v2 (the
//! joining server's side, as a real remote does it).

use std::rc::Rc;
use std::sync::Arc;

use hearth::config::FederationSection;
use hearth::events::{RoomVersion, ServerKey};
use hearth::federation::Federation;
use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue};
use serde_json::Value;

use crate::client::enc;
use crate::remote_server::RemoteServer;

pub fn runtime_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// A federation client signing requests with `key` (loopback allowed,
/// self-signed peers accepted: every server of a run is on this machine).
pub fn fed_client(key: Arc<ServerKey>, conns: usize) -> anyhow::Result<Rc<Federation>> {
    let cfg = FederationSection {
        allow_ip_ranges: vec!["127.0.0.0/8".into()],
        verify_peer_tls: false,
        max_idle_per_destination: conns.max(4),
        ..FederationSection::default()
    };
    let tls = hearth::federation::tls::client_config(false).map_err(runtime_err)?;
    Ok(Rc::new(Federation::new(
        key,
        Arc::new(Vec::new()),
        tls,
        &cfg,
        Vec::new(),
    )))
}

pub fn to_canonical(v: &Value) -> anyhow::Result<CanonicalJsonObject> {
    let Value::Object(m) = v.clone() else {
        anyhow::bail!("not a JSON object: {v}");
    };
    ruma::canonical_json::try_from_json_map(m).map_err(runtime_err)
}

/// A federation request that must answer 200 with JSON.
pub async fn fed_json(
    fed: &Federation,
    dest: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let r = fed
        .request(dest, method, path, body)
        .await
        .map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))?;
    if r.status != 200 {
        anyhow::bail!(
            "{method} {path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    serde_json::from_slice(&r.body).map_err(|e| anyhow::anyhow!("{method} {path}: {e}"))
}

/// Joins `user` (of `remote`) to the target `dest`'s `room`: the template
/// from `make_join`, filled and signed by the remote, sent with
/// `send_join` v2. Returns the join's event id and depth.
pub async fn join_remote_user(
    fed: &Federation,
    dest: &str,
    remote: &RemoteServer,
    room: &str,
    user: &str,
    version: RoomVersion,
) -> anyhow::Result<(String, u64)> {
    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver={}",
        enc(room),
        enc(user),
        version.as_str()
    );
    let made = fed_json(fed, dest, "GET", &path, None).await?;
    let mut ev = to_canonical(&made["event"])?;
    // A template may lack origin/origin_server_ts; the joining server fills them.
    ev.insert(
        "origin".into(),
        CanonicalJsonValue::String(remote.name.clone()),
    );
    ev.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(
            (hearth::primitives::unix_ms() as i64)
                .try_into()
                .map_err(runtime_err)?,
        ),
    );
    hearth::events::hash_and_sign(&mut ev, version, &remote.key).map_err(runtime_err)?;
    let id = hearth::events::event_id_of(&ev, version)
        .map_err(runtime_err)?
        .to_string();
    let depth = match ev.get("depth") {
        Some(CanonicalJsonValue::Integer(d)) => i64::from(*d) as u64,
        _ => anyhow::bail!("make_join template without depth"),
    };
    let mut body = serde_json::to_value(&ev)?;
    if let Value::Object(m) = &mut body {
        m.remove("event_id");
    }
    let path = format!(
        "/_matrix/federation/v2/send_join/{}/{}",
        enc(room),
        enc(&id)
    );
    fed_json(fed, dest, "PUT", &path, Some(&body)).await?;
    Ok((id, depth))
}
