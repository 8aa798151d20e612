//! End-to-end: the federation transport over real TLS on loopback.
//! hearth's own federation client (the library, on a monoio runtime in
//! the test) talks to real `hearth` binaries' federation listeners (a
//! self-signed certificate made here): `/version`, key fetches, the
//! notary API between two servers, signed requests accepted, forged /
//! wrong-destination / unsigned ones refused with 401, the IP policy,
//! connection reuse, the response size limit, key rotation, and
//! `/.well-known` on the client listener.

mod common;

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use common::{assert_err, call, Hearth, Opts};
use hearth::config::FederationSection;
use hearth::db::testing::TestCluster;
use hearth::events::ServerKey;
use hearth::federation::keys::check_key_response;
use hearth::federation::{FedError, Federation};
use ruma::canonical_json::CanonicalJsonObject;
use serde_json::{json, Value};

/// A self-signed certificate for `localhost` / 127.0.0.1 in `dir`.
fn write_cert(dir: &Path) -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("self-signed certificate");
    let c = dir.join("fed.crt");
    let k = dir.join("fed.key");
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

fn free_port() -> u16 {
    common::fed::free_port()
}

/// A hearth named `localhost:<port>` with a TLS federation listener on
/// that port that may federate over loopback.
struct FedServer {
    h: Hearth,
    name: String,
    port: u16,
    db_url: String,
    certs: tempfile::TempDir,
}

fn opts(name: &str, port: u16, db_url: &str, certs: &Path, extra: &[(&str, &str)]) -> Opts {
    let (cert, key) = write_cert(certs);
    let mut o = Opts::shards(2)
        .env("HEARTH_DATABASE__URL", db_url)
        .env("HEARTH_SERVER_NAME", name)
        .env("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1")
        .env("HEARTH_LISTENERS__1__PORT", &port.to_string())
        .env("HEARTH_LISTENERS__1__KIND", "federation")
        .env("HEARTH_LISTENERS__1__TLS_CERTIFICATE", &cert)
        .env("HEARTH_LISTENERS__1__TLS_PRIVATE_KEY", &key)
        .env(
            "HEARTH_FEDERATION__ALLOW_IP_RANGES",
            r#"["127.0.0.0/8", "::1/128"]"#,
        )
        .env("HEARTH_FEDERATION__VERIFY_PEER_TLS", "false");
    for (k, v) in extra {
        o = o.env(k, v);
    }
    o
}

fn start_fed(extra: &[(&str, &str)]) -> FedServer {
    let db_url = TestCluster::shared().fresh_database().url();
    let port = free_port();
    let name = format!("localhost:{port}");
    let certs = tempfile::tempdir().unwrap();
    let h = Hearth::start(opts(&name, port, &db_url, certs.path(), extra));
    FedServer {
        h,
        name,
        port,
        db_url,
        certs,
    }
}

impl FedServer {
    fn key(&self) -> ServerKey {
        ServerKey::load_or_create(self.h.data_dir.path(), &self.name).unwrap()
    }
}

fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// A federation client in this process, signing as `key`.
fn client(key: ServerKey, cfg: FederationSection) -> Rc<Federation> {
    let tls = hearth::federation::tls::client_config(cfg.verify_peer_tls).unwrap();
    Rc::new(Federation::new(
        Arc::new(key),
        Arc::new(Vec::new()),
        tls,
        &cfg,
        Vec::new(),
    ))
}

fn loopback_cfg() -> FederationSection {
    FederationSection {
        allow_ip_ranges: vec!["127.0.0.0/8".into(), "::1/128".into()],
        verify_peer_tls: false,
        ..FederationSection::default()
    }
}

fn stranger_key(name: &str) -> ServerKey {
    ServerKey::from_seed(name.try_into().unwrap(), "stranger", &[42; 32]).unwrap()
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("JSON body")
}

#[test]
fn version_keys_reuse_and_limits_over_tls() {
    let b = start_fed(&[]);
    let fed = client(stranger_key("tester.invalid"), loopback_cfg());
    runtime().block_on(async {
        let v = fed
            .get_unsigned(&b.name, "/_matrix/federation/v1/version", 1 << 20)
            .await
            .unwrap();
        assert_eq!(v.status, 200);
        assert_eq!(json_of(&v.body)["server"]["name"], "hearth");
        assert_eq!(v.header("content-type"), Some("application/json"));
        // The TLS connection went back to the pool and is reused.
        assert_eq!(fed.http.idle_count(&b.name), 1);

        let r = fed
            .get_unsigned(&b.name, "/_matrix/key/v2/server", 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(fed.http.idle_count(&b.name), 1, "one connection, reused");
        let signed: CanonicalJsonObject = serde_json::from_slice(&r.body).unwrap();
        let now = hearth::primitives::unix_ms();
        let keys = check_key_response(signed, &b.name, now).expect("self-signed by B");
        let own = b.key();
        assert_eq!(
            keys.verify_keys[own.key_id.as_str()],
            own.keypair.public_key().to_vec()
        );
        assert!(
            keys.valid_until_ts > now + 3_600_000,
            "valid for about a day"
        );
        assert!(json_of(&r.body)["old_verify_keys"]
            .as_object()
            .unwrap()
            .is_empty());

        // Through the key store (cached, one fetch for many callers).
        let (k1, k2) =
            futures_util::join!(fed.server_keys(&b.name, 0), fed.server_keys(&b.name, 0));
        assert_eq!(k1.unwrap().verify_keys, k2.unwrap().verify_keys);
        assert!(fed.cached_server_keys(&b.name).is_some());

        // Response size limit.
        let err = fed
            .get_unsigned(&b.name, "/_matrix/key/v2/server", 16)
            .await
            .unwrap_err();
        assert!(matches!(err, FedError::TooLarge), "{err:?}");

        // Unknown endpoints: 404 M_UNRECOGNIZED over federation too.
        let r = fed
            .get_unsigned(&b.name, "/_matrix/federation/v1/nope", 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(json_of(&r.body)["errcode"], "M_UNRECOGNIZED");
    });
}

#[test]
fn loopback_is_denied_by_default() {
    let b = start_fed(&[]);
    let cfg = FederationSection {
        verify_peer_tls: false,
        ..FederationSection::default()
    };
    let fed = client(stranger_key("tester.invalid"), cfg);
    runtime().block_on(async {
        let err = fed
            .get_unsigned(&b.name, "/_matrix/federation/v1/version", 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, FedError::Denied(_)), "{err:?}");
        let ip_name = format!("127.0.0.1:{}", b.port);
        let err = fed
            .get_unsigned(&ip_name, "/_matrix/federation/v1/version", 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, FedError::Denied(_)), "{err:?}");
    });
    // With verification on, a self-signed certificate is refused.
    let fed = client(
        stranger_key("tester.invalid"),
        FederationSection {
            verify_peer_tls: true,
            ..loopback_cfg()
        },
    );
    runtime().block_on(async {
        let err = fed
            .get_unsigned(&b.name, "/_matrix/federation/v1/version", 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, FedError::Tls(_)), "{err:?}");
    });
}

/// Profile query as a signed request: `origin` signs for `destination`.
/// A signed `GET` with the raw answer (any status).
async fn signed_get(
    fed: &Federation,
    destination: &str,
    path: &str,
) -> hearth::federation::HttpResponse {
    let auth = hearth::federation::x_matrix::sign_request(&fed.key, destination, "GET", path, None)
        .unwrap();
    fed.send_raw(
        destination,
        "GET",
        path,
        &[("Authorization", &auth)],
        None,
        1 << 20,
    )
    .await
    .unwrap()
}

async fn profile_query(
    fed: &Federation,
    to: &FedServer,
    user: &str,
    destination: &str,
) -> hearth::federation::HttpResponse {
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=displayname",
        common::enc(user)
    );
    let auth =
        hearth::federation::x_matrix::sign_request(&fed.key, destination, "GET", &path, None)
            .unwrap();
    fed.send_raw(
        &to.name,
        "GET",
        &path,
        &[("Authorization", &auth)],
        None,
        1 << 20,
    )
    .await
    .unwrap()
}

#[test]
fn notary_and_request_authentication_between_two_servers() {
    let a = start_fed(&[]);
    let b = start_fed(&[]);
    let alice = common::register_user(&b.h, "alice");
    let r = call(
        &b.h,
        "PUT",
        &format!(
            "/_matrix/client/v3/profile/{}/displayname",
            common::enc(&alice.id)
        ),
        &alice.token,
        Some(json!({"displayname": "Alice B"})),
    );
    assert_eq!(r.status, 200);

    // A signs as itself (its key, read from its data dir); B fetches A's
    // key from A's federation listener to check the signature.
    let as_a = client(a.key(), loopback_cfg());
    let a_key = a.key();
    let b_key = b.key();
    runtime().block_on(async {
        let r = profile_query(&as_a, &b, &alice.id, &b.name).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(json_of(&r.body), json!({"displayname": "Alice B"}));

        // The same through the signing helper of the client.
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            common::enc(&alice.id)
        );
        let v: Value = as_a
            .request_json(&b.name, "GET", &path, None)
            .await
            .unwrap();
        assert_eq!(v["displayname"], "Alice B");

        // Signed for another destination: 401.
        let r = profile_query(&as_a, &b, &alice.id, "elsewhere.example").await;
        assert_eq!(r.status, 401);
        assert_eq!(json_of(&r.body)["errcode"], "M_UNAUTHORIZED");

        // Forged: claims to be A with A's key id, signed by another key.
        let forger = client(
            ServerKey::from_seed(
                a.name.as_str().try_into().unwrap(),
                a_key.version(),
                &[7; 32],
            )
            .unwrap(),
            loopback_cfg(),
        );
        let r = profile_query(&forger, &b, &alice.id, &b.name).await;
        assert_eq!(r.status, 401);
        assert_eq!(json_of(&r.body)["errcode"], "M_UNAUTHORIZED");

        // A server whose keys cannot be fetched at all.
        let nobody = client(stranger_key("127.0.0.1:1"), loopback_cfg());
        let r = profile_query(&nobody, &b, &alice.id, &b.name).await;
        assert_eq!(r.status, 401);

        // Unsigned and garbage headers.
        for headers in [
            vec![],
            vec![("Authorization", "X-Matrix nonsense")],
            vec![("Authorization", "Bearer abc")],
            vec![(
                "Authorization",
                "X-Matrix origin=\"\u{1F600}\",key=\"k\",sig=\"s\"",
            )],
        ] {
            let r = as_a
                .send_raw(&b.name, "GET", &path, &headers, None, 1 << 20)
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{headers:?}");
            assert_eq!(json_of(&r.body)["errcode"], "M_UNAUTHORIZED");
        }

        // A signed body is covered too: changing it breaks the signature.
        let auth = hearth::federation::x_matrix::sign_request(
            &as_a.key,
            &b.name,
            "GET",
            &path,
            Some(serde_json::from_str("{\"a\":1}").unwrap()),
        )
        .unwrap();
        let r = as_a
            .send_raw(
                &b.name,
                "GET",
                &path,
                &[("Authorization", &auth)],
                Some(b"{\"a\":2}"),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 401);

        // Notary: A answers for B's keys, signed by B and co-signed by A.
        let body = json!({"server_keys": {b.name.clone(): {}}});
        let r = as_a
            .send_raw(
                &a.name,
                "POST",
                "/_matrix/key/v2/query",
                &[],
                Some(body.to_string().as_bytes()),
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = json_of(&r.body);
        let list = v["server_keys"].as_array().unwrap();
        assert_eq!(list.len(), 1);
        let entry: CanonicalJsonObject = serde_json::from_value(list[0].clone()).unwrap();
        assert!(list[0]["signatures"][&a.name][a_key.key_id.as_str()].is_string());
        let checked = check_key_response(entry, &b.name, 0).expect("B's own signature holds");
        assert_eq!(
            checked.verify_keys[b_key.key_id.as_str()],
            b_key.keypair.public_key().to_vec()
        );
        let a_sig = list[0]["signatures"][&a.name][a_key.key_id.as_str()]
            .as_str()
            .unwrap();
        let mut unsigned: CanonicalJsonObject = serde_json::from_value(list[0].clone()).unwrap();
        unsigned.remove("signatures");
        assert!(hearth::federation::x_matrix::verify_signature(
            &unsigned,
            &a_key.keypair.public_key(),
            a_sig
        ));

        // GET form, for A itself and for B; and an unreachable server.
        for (server, expect) in [(&a.name, 1), (&b.name, 1)] {
            let r = as_a
                .get_unsigned(&a.name, &format!("/_matrix/key/v2/query/{server}"), 1 << 20)
                .await
                .unwrap();
            assert_eq!(r.status, 200);
            let v = json_of(&r.body);
            assert_eq!(v["server_keys"].as_array().unwrap().len(), expect);
            assert_eq!(v["server_keys"][0]["server_name"], server.as_str());
        }
        let r = as_a
            .get_unsigned(&a.name, "/_matrix/key/v2/query/127.0.0.1:1", 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(json_of(&r.body), json!({"server_keys": []}));
    });

    // A client that trusts A as its notary gets B's keys through A.
    let cfg = FederationSection {
        trusted_key_servers: vec![hearth::config::TrustedKeyServer {
            server_name: a.name.clone(),
            verify_keys: [(a_key.key_id.to_string(), a_key.public_key_base64())].into(),
        }],
        ..loopback_cfg()
    };
    let via_notary = client(stranger_key("tester.invalid"), cfg);
    runtime().block_on(async {
        let k = via_notary.server_keys(&b.name, 0).await.unwrap();
        assert_eq!(
            k.verify_keys[b_key.key_id.as_str()],
            b_key.keypair.public_key().to_vec()
        );
    });
}

#[test]
fn rotated_keys_are_listed_as_old_verify_keys() {
    let mut b = start_fed(&[]);
    let old = b.key();
    b.h.signal(libc::SIGTERM);
    assert_eq!(b.h.wait_exit(std::time::Duration::from_secs(30)), Some(0));
    let new = hearth::events::old_keys::rotate(b.h.data_dir.path(), &b.name, 1_234).unwrap();
    assert_ne!(new.key_id, old.key_id);
    let data_dir = std::mem::replace(&mut b.h.data_dir, tempfile::tempdir().unwrap());
    let h = Hearth::start_in(
        opts(&b.name, b.port, &b.db_url, b.certs.path(), &[]),
        data_dir,
    );
    let fed = client(stranger_key("tester.invalid"), loopback_cfg());
    runtime().block_on(async {
        let r = fed
            .get_unsigned(&b.name, "/_matrix/key/v2/server", 1 << 20)
            .await
            .unwrap();
        let v = json_of(&r.body);
        assert_eq!(
            v["old_verify_keys"][old.key_id.as_str()],
            json!({"key": old.public_key_base64(), "expired_ts": 1_234})
        );
        assert!(v["verify_keys"][new.key_id.as_str()].is_object());
        assert!(v["verify_keys"].get(old.key_id.as_str()).is_none());
        let signed: CanonicalJsonObject = serde_json::from_value(v).unwrap();
        check_key_response(signed, &b.name, 0).expect("signed by the new key");
    });
    drop(h);
}

#[test]
fn well_known_on_the_client_listener() {
    let b = start_fed(&[
        ("HEARTH_WELL_KNOWN__SERVER", "\"matrix.example.org:443\""),
        (
            "HEARTH_WELL_KNOWN__CLIENT",
            "\"https://matrix.example.org\"",
        ),
    ]);
    let r = common::get(&b.h, "/.well-known/matrix/server");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"m.server": "matrix.example.org:443"}));
    let r = common::get(&b.h, "/.well-known/matrix/client");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["m.homeserver"]["base_url"],
        "https://matrix.example.org"
    );
    let plain = start_fed(&[]);
    let r = common::get(&plain.h, "/.well-known/matrix/server");
    assert_err(&r, 404, "M_NOT_FOUND");
}

/// Federation queries of a server's directory (server-server "Querying for
/// information", "Public Room Directory"): alias lookups and the public
/// room list, to authenticated servers only.
#[test]
fn directory_and_public_rooms_over_federation() {
    let a = start_fed(&[]);
    let b = start_fed(&[]);
    let alice = common::register_user(&b.h, "alice");
    let r = call(
        &b.h,
        "POST",
        "/_matrix/client/v3/createRoom",
        &alice.token,
        Some(json!({"room_alias_name": "pub", "visibility": "public", "name": "Lobby"})),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let room_id = json_of(&r.body)["room_id"].as_str().unwrap().to_owned();
    let alias = format!("#pub:{}", b.name);

    let as_a = client(a.key(), loopback_cfg());
    runtime().block_on(async {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            common::enc(&alias)
        );
        let v: Value = as_a
            .request_json(&b.name, "GET", &path, None)
            .await
            .unwrap();
        assert_eq!(v, json!({"room_id": room_id, "servers": [b.name]}));

        for missing in [format!("#nope:{}", b.name), "#pub:elsewhere.example".into()] {
            let path = format!(
                "/_matrix/federation/v1/query/directory?room_alias={}",
                common::enc(&missing)
            );
            let r = signed_get(&as_a, &b.name, &path).await;
            assert_eq!(r.status, 404, "{missing}");
            assert_eq!(json_of(&r.body)["errcode"], "M_NOT_FOUND");
        }

        let v: Value = as_a
            .request_json(
                &b.name,
                "GET",
                "/_matrix/federation/v1/publicRooms?limit=10",
                None,
            )
            .await
            .unwrap();
        let chunk = v["chunk"].as_array().unwrap();
        assert_eq!(chunk.len(), 1, "{v}");
        assert_eq!(chunk[0]["room_id"], room_id.as_str());
        assert_eq!(chunk[0]["name"], "Lobby");

        let body = json!({"filter": {"generic_search_term": "lobby"}});
        let v: Value = as_a
            .request_json(
                &b.name,
                "POST",
                "/_matrix/federation/v1/publicRooms",
                Some(&body),
            )
            .await
            .unwrap();
        assert_eq!(v["chunk"][0]["room_id"], room_id.as_str(), "{v}");
        let body = json!({"filter": {"generic_search_term": "nothing like it"}});
        let v: Value = as_a
            .request_json(
                &b.name,
                "POST",
                "/_matrix/federation/v1/publicRooms",
                Some(&body),
            )
            .await
            .unwrap();
        assert_eq!(v["chunk"], json!([]), "{v}");

        // Unsigned: 401.
        let r = as_a
            .send_raw(
                &b.name,
                "GET",
                "/_matrix/federation/v1/publicRooms",
                &[],
                None,
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    });
}

/// `value` signed with `kp` as `user`, as a client's Olm account would.
fn olm_signed(user: &str, kp: &ruma::signatures::Ed25519KeyPair, value: Value) -> Value {
    let mut obj: CanonicalJsonObject =
        ruma::canonical_json::try_from_json_map(value.as_object().unwrap().clone()).unwrap();
    ruma::signatures::sign_json(user, kp, &mut obj).unwrap();
    serde_json::to_value(obj).unwrap()
}

/// A remote server reads a local user's devices and keys, and claims a
/// one-time key once (server-server "End-to-End Encryption", "Device
/// Management").
#[test]
fn user_devices_and_keys_over_federation() {
    use ruma::serde::{base64::Standard, Base64};
    let a = start_fed(&[]);
    let b = start_fed(&[]);
    let alice = common::register_user(&b.h, "alice");
    let d = alice.device.clone();
    let doc = ruma::signatures::Ed25519KeyPair::generate();
    let kp = ruma::signatures::Ed25519KeyPair::from_der(&doc, d.clone()).unwrap();
    let b64 = |bytes: &[u8]| Base64::<Standard, Vec<u8>>::new(bytes.to_vec()).encode();
    let device_keys = olm_signed(
        &alice.id,
        &kp,
        json!({
            "user_id": alice.id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{d}"): b64(b"curve-key-of-the-device-32bytes!"),
                format!("ed25519:{d}"): b64(&kp.public_key()),
            },
        }),
    );
    let otk = olm_signed(&alice.id, &kp, json!({"key": b64(b"one")}));
    let r = call(
        &b.h,
        "POST",
        "/_matrix/client/v3/keys/upload",
        &alice.token,
        Some(json!({
            "device_keys": device_keys,
            "one_time_keys": {"signed_curve25519:AAAAAQ": otk},
        })),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    let as_a = client(a.key(), loopback_cfg());
    runtime().block_on(async {
        let v: Value = as_a
            .request_json(
                &b.name,
                "GET",
                &format!(
                    "/_matrix/federation/v1/user/devices/{}",
                    common::enc(&alice.id)
                ),
                None,
            )
            .await
            .unwrap();
        assert_eq!(v["user_id"], alice.id.as_str());
        assert!(v["stream_id"].is_i64(), "{v}");
        let devices = v["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 1, "{v}");
        assert_eq!(devices[0]["device_id"], d.as_str());
        assert_eq!(devices[0]["keys"]["keys"], device_keys["keys"]);

        let query = json!({"device_keys": {alice.id.clone(): [], "@bob:elsewhere.example": []}});
        let v: Value = as_a
            .request_json(
                &b.name,
                "POST",
                "/_matrix/federation/v1/user/keys/query",
                Some(&query),
            )
            .await
            .unwrap();
        assert_eq!(
            v["device_keys"][&alice.id][&d]["keys"], device_keys["keys"],
            "{v}"
        );
        assert!(
            v["device_keys"].get("@bob:elsewhere.example").is_none(),
            "{v}"
        );
        assert!(v.get("user_signing_keys").is_none(), "{v}");

        let claim = json!({"one_time_keys": {alice.id.clone(): {d.clone(): "signed_curve25519"}}});
        let v: Value = as_a
            .request_json(
                &b.name,
                "POST",
                "/_matrix/federation/v1/user/keys/claim",
                Some(&claim),
            )
            .await
            .unwrap();
        let got = &v["one_time_keys"][&alice.id][&d];
        assert_eq!(got["signed_curve25519:AAAAAQ"]["key"], otk["key"], "{v}");
        // Handed out once: no key left, no fallback.
        let v: Value = as_a
            .request_json(
                &b.name,
                "POST",
                "/_matrix/federation/v1/user/keys/claim",
                Some(&claim),
            )
            .await
            .unwrap();
        assert_eq!(v["one_time_keys"], json!({}), "{v}");

        // A remote user's devices are not ours to tell; unsigned is 401.
        let path = format!(
            "/_matrix/federation/v1/user/devices/{}",
            common::enc("@bob:elsewhere.example")
        );
        let r = signed_get(&as_a, &b.name, &path).await;
        assert_eq!(r.status, 400);
        let r = as_a
            .send_raw(&b.name, "GET", &path, &[], None, 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 401);
    });
}

/// OpenID (client-server and server-server "OpenID"): a user's token, checked
/// by a third party with `/openid/userinfo` on the federation listener.
#[test]
fn openid_tokens_are_checked_over_federation() {
    let b = start_fed(&[]);
    let alice = common::register_user(&b.h, "alice");
    let bob = common::register_user(&b.h, "bob");
    let path = format!(
        "/_matrix/client/v3/user/{}/openid/request_token",
        common::enc(&alice.id)
    );
    let r = call(&b.h, "POST", &path, &bob.token, Some(json!({})));
    assert_err(&r, 403, "M_FORBIDDEN");
    let r = call(&b.h, "POST", &path, &alice.token, Some(json!({})));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = json_of(&r.body);
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["matrix_server_name"], b.name.as_str());
    assert_eq!(v["expires_in"], 3600);
    let token = v["access_token"].as_str().unwrap().to_owned();

    let fed = client(stranger_key("third.party"), loopback_cfg());
    runtime().block_on(async {
        let ask = |t: String| {
            let fed = fed.clone();
            let name = b.name.clone();
            async move {
                let path = format!(
                    "/_matrix/federation/v1/openid/userinfo?access_token={}",
                    common::enc(&t)
                );
                fed.send_raw(&name, "GET", &path, &[], None, 1 << 20)
                    .await
                    .unwrap()
            }
        };
        let r = ask(token.clone()).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(json_of(&r.body), json!({"sub": alice.id}));
        // An access token is not an OpenID token.
        let r = ask(alice.token.clone()).await;
        assert_eq!(r.status, 401);
        assert_eq!(json_of(&r.body)["errcode"], "M_UNKNOWN_TOKEN");
    });
}
