//! Interop with a real Synapse (PyPI, pinned by `scripts/ensure-synapse.sh`,
//! SQLite) over TLS on loopback, both directions of the transport:
//! - Synapse as a notary fetches hearth's `/_matrix/key/v2/server` over
//!   TLS, checks it and serves it co-signed;
//! - a Synapse profile lookup of a hearth user is a signed federation
//!   request hearth authenticates (fetching Synapse's key);
//! - hearth signs a request to Synapse, which accepts the signature.
//!
//! A missing python or a failed install fails the test: it never skips.

mod common;

use common::fed::{free_port, write_cert};
use common::synapse::{json_of, start_synapse, syn_get, synapse_python};

use std::rc::Rc;
use std::sync::Arc;

use common::{call, enc, Hearth, Opts};
use hearth::config::FederationSection;
use hearth::db::testing::TestCluster;
use hearth::events::ServerKey;
use hearth::federation::Federation;
use serde_json::json;

#[test]
fn synapse_and_hearth_authenticate_each_other() {
    let py = synapse_python();
    let syn = start_synapse(&py);

    let db_url = TestCluster::shared().fresh_database().url();
    let port = free_port();
    let hname = format!("localhost:{port}");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = write_cert(certs.path());
    let h = Hearth::start(
        Opts::shards(2)
            .env("HEARTH_DATABASE__URL", &db_url)
            .env("HEARTH_SERVER_NAME", &hname)
            .env("HEARTH_LISTENERS__1__ADDRESS", "127.0.0.1")
            .env("HEARTH_LISTENERS__1__PORT", &port.to_string())
            .env("HEARTH_LISTENERS__1__KIND", "federation")
            .env("HEARTH_LISTENERS__1__TLS_CERTIFICATE", &cert)
            .env("HEARTH_LISTENERS__1__TLS_PRIVATE_KEY", &key)
            .env(
                "HEARTH_FEDERATION__ALLOW_IP_RANGES",
                r#"["127.0.0.0/8", "::1/128"]"#,
            )
            .env("HEARTH_FEDERATION__VERIFY_PEER_TLS", "false"),
    );
    let alice = common::register_user(&h, "alice");
    let r = call(
        &h,
        "PUT",
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.id)),
        &alice.token,
        Some(json!({"displayname": "Alice of hearth"})),
    );
    assert_eq!(r.status, 200);
    let hkey = ServerKey::load_or_create(h.data_dir.path(), &hname).unwrap();

    // 1. Synapse, as a notary, fetches and co-signs hearth's keys.
    // Synapse's notary fetches on a cache miss only when a key id is named
    // (an "all keys" query answers from its cache alone).
    let (status, body) = syn_get(
        syn.client,
        &format!(
            "/_matrix/key/v2/query/{hname}/{}",
            enc(hkey.key_id.as_str())
        ),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v = json_of(&body);
    let entry = &v["server_keys"][0];
    assert_eq!(entry["server_name"], hname.as_str(), "{v}");
    assert_eq!(
        entry["verify_keys"][hkey.key_id.as_str()]["key"],
        hkey.public_key_base64()
    );
    assert!(entry["signatures"][&hname][hkey.key_id.as_str()].is_string());
    assert!(
        entry["signatures"][&syn.name].is_object(),
        "co-signed by Synapse: {v}"
    );

    // 2. Synapse asks hearth for a profile over federation (signed by
    //    Synapse; hearth fetches Synapse's key to check it).
    let (status, body) = syn_get(
        syn.client,
        &format!("/_matrix/client/v3/profile/{}", enc(&alice.id)),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_of(&body)["displayname"], "Alice of hearth");

    // 3. hearth signs a request to Synapse; Synapse accepts the signature
    //    (404: no such user, not 401) after fetching hearth's key.
    let cfg = FederationSection {
        allow_ip_ranges: vec!["127.0.0.0/8".into()],
        verify_peer_tls: false,
        ..FederationSection::default()
    };
    let tls = hearth::federation::tls::client_config(false).unwrap();
    let fed = Rc::new(Federation::new(
        Arc::new(hkey),
        Arc::new(Vec::new()),
        tls,
        &cfg,
        Vec::new(),
    ));
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(async {
        let nobody = format!("@nobody:{}", syn.name);
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            enc(&nobody)
        );
        let r = fed.request(&syn.name, "GET", &path, None).await.unwrap();
        assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(json_of(&r.body)["errcode"], "M_NOT_FOUND");
        // An unsigned one is refused by Synapse.
        let r = fed
            .send_raw(&syn.name, "GET", &path, &[], None, 1 << 20)
            .await
            .unwrap();
        assert_eq!(r.status, 401);
        // And hearth's key store accepts Synapse's key response.
        let keys = fed.server_keys(&syn.name, 0).await.unwrap();
        assert!(!keys.verify_keys.is_empty());
    });
}
