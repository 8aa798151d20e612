//! End-to-end: the content repository over HTTP against the real binary (2
//! shards, or 1 under `HEARTH_TEST_SHARDS=1`) and a real PostgreSQL:
//! upload and download, reserve-then-fill, size limits, thumbnails of real
//! PNG and JPEG images, the headers that make serving safe, the legacy
//! freeze, and media surviving a restart.

mod common;

use std::io::{Cursor, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{assert_err, ok, read_response, Hearth, Opts, Resp};
use hearth::db::testing::{TestCluster, TestDb};
use image::{DynamicImage, ImageFormat};

const V1: &str = "/_matrix/client/v1/media";
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

fn start_with(env: &[(&str, &str)]) -> (Hearth, TestDb) {
    let db = TestCluster::shared().fresh_database();
    let mut opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    (Hearth::start(opts), db)
}

/// One request with an optional token, `Content-Type` and raw body.
fn raw_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s, false)
}

fn raw(
    h: &Hearth,
    method: &str,
    path: &str,
    token: Option<&str>,
    ct: Option<&str>,
    body: &[u8],
) -> Resp {
    raw_to(h.addr, method, path, token, ct, body)
}

fn get(h: &Hearth, path: &str, token: Option<&str>) -> Resp {
    raw(h, "GET", path, token, None, b"")
}

/// Uploads `body`, returning (server name, media id).
fn upload(h: &Hearth, token: &str, ct: &str, name: Option<&str>, body: &[u8]) -> (String, String) {
    let path = match name {
        Some(n) => format!("/_matrix/media/v3/upload?filename={}", common::enc(n)),
        None => "/_matrix/media/v3/upload".to_owned(),
    };
    let v = ok(raw(h, "POST", &path, Some(token), Some(ct), body));
    split_mxc(v["content_uri"].as_str().unwrap())
}

fn split_mxc(uri: &str) -> (String, String) {
    let rest = uri.strip_prefix("mxc://").expect("mxc uri");
    let (s, m) = rest.split_once('/').unwrap();
    (s.to_owned(), m.to_owned())
}

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn image_bytes(w: u32, h: u32, format: ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 99])
    });
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), format)
        .unwrap();
    out
}

fn dims(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("an image");
    (img.width(), img.height())
}

#[test]
fn upload_download_round_trip_with_safe_headers() {
    let (h, _db) = start_with(&[]);
    let alice = common::register(&h, "alice");
    let body = noise(1024 * 1024, 1);
    let (server, id) = upload(
        &h,
        &alice,
        "application/octet-stream",
        Some("blob.bin"),
        &body,
    );
    assert_eq!(server, "localhost");
    assert_eq!(id.len(), 24);

    let r = get(&h, &format!("{V1}/download/{server}/{id}"), Some(&alice));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"blob.bin\"")
    );
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        r.header("cross-origin-resource-policy"),
        Some("cross-origin")
    );

    // The file name in the path replaces the uploaded one, encoded per RFC 6266.
    let r = get(
        &h,
        &format!(
            "{V1}/download/{server}/{id}/{}",
            common::enc("résumé \"1\".bin")
        ),
        Some(&alice),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20%221%22.bin")
    );

    // Another user downloads it too; identical content gets its own URI.
    let bob = common::register(&h, "bob");
    let (_, id2) = upload(&h, &bob, "application/octet-stream", None, &body);
    assert_ne!(id, id2);
    let r = get(&h, &format!("{V1}/download/{server}/{id2}"), Some(&alice));
    assert_eq!(r.body, body);
    assert_eq!(r.header("content-disposition"), Some("attachment"));

    // Safe types inline; HTML never.
    let (_, png) = upload(
        &h,
        &alice,
        "image/png",
        Some("a.png"),
        &image_bytes(4, 4, ImageFormat::Png),
    );
    let r = get(&h, &format!("{V1}/download/{server}/{png}"), Some(&alice));
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"a.png\"")
    );
    let html = b"<html><script>alert(1)</script></html>";
    let (_, page) = upload(&h, &alice, "text/html", Some("x.html"), html);
    let r = get(&h, &format!("{V1}/download/{server}/{page}"), Some(&alice));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"x.html\"")
    );
    assert_eq!(r.header("content-security-policy"), Some(CSP));

    // Unknown, unreachable remote and malformed ids.
    assert_err(
        &get(&h, &format!("{V1}/download/{server}/nope"), Some(&alice)),
        404,
        "M_NOT_FOUND",
    );
    // Remote media is fetched over federation: a server we cannot reach
    // (loopback is denied by default) is 502, as in Synapse.
    assert_err(
        &get(&h, &format!("{V1}/download/localhost:1/{id}"), Some(&alice)),
        502,
        "M_UNKNOWN",
    );
    assert_err(
        &get(
            &h,
            &format!("{V1}/download/{server}/..%2F..%2Fetc"),
            Some(&alice),
        ),
        400,
        "M_INVALID_PARAM",
    );

    // The limit clients read.
    let v = ok(get(&h, &format!("{V1}/config"), Some(&alice)));
    assert_eq!(v["m.upload.size"], 50 * 1024 * 1024);
    let v = ok(get(&h, "/_matrix/media/v3/config", Some(&alice)));
    assert_eq!(v["m.upload.size"], 50 * 1024 * 1024);
}

#[test]
fn authenticated_routes_need_a_token_and_legacy_ones_are_frozen() {
    let (h, _db) = start_with(&[]);
    let alice = common::register(&h, "alice");
    let png = image_bytes(64, 64, ImageFormat::Png);
    let (server, id) = upload(&h, &alice, "image/png", None, &png);
    for path in [
        format!("{V1}/download/{server}/{id}"),
        format!("{V1}/thumbnail/{server}/{id}?width=32&height=32"),
        format!("{V1}/config"),
        "/_matrix/media/v3/config".to_owned(),
    ] {
        assert_err(&get(&h, &path, None), 401, "M_MISSING_TOKEN");
        assert_err(&get(&h, &path, Some("bogus")), 401, "M_UNKNOWN_TOKEN");
    }
    assert_err(
        &raw(
            &h,
            "POST",
            "/_matrix/media/v3/upload",
            None,
            Some("text/plain"),
            b"x",
        ),
        401,
        "M_MISSING_TOKEN",
    );
    // Off by default: the deprecated routes serve nothing uploaded now.
    for path in [
        format!("/_matrix/media/v3/download/{server}/{id}"),
        format!("/_matrix/media/r0/download/{server}/{id}/a.png"),
        format!("/_matrix/media/v3/thumbnail/{server}/{id}?width=32&height=32"),
    ] {
        assert_err(&get(&h, &path, None), 404, "M_NOT_FOUND");
        assert_err(&get(&h, &path, Some(&alice)), 404, "M_NOT_FOUND");
    }
    // No URL previews: 404 as Synapse with previews off.
    let r = get(
        &h,
        &format!("{V1}/preview_url?url=https%3A%2F%2Fexample.org"),
        Some(&alice),
    );
    assert_eq!(r.status, 404);
    // /versions lists v1.11 (authenticated media) now that it is served.
    let v = ok(get(&h, "/_matrix/client/versions", None));
    let versions: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(versions.contains(&"v1.11"), "{versions:?}");
}

#[test]
fn legacy_routes_serve_when_switched_on() {
    let (h, _db) = start_with(&[("HEARTH_MEDIA__LEGACY_UNAUTHENTICATED", "true")]);
    let alice = common::register(&h, "alice");
    let png = image_bytes(64, 64, ImageFormat::Png);
    let (server, id) = upload(&h, &alice, "image/png", None, &png);
    let r = get(
        &h,
        &format!("/_matrix/media/v3/download/{server}/{id}"),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, png);
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    let r = get(
        &h,
        &format!("/_matrix/media/v3/thumbnail/{server}/{id}?width=32&height=32&method=crop"),
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(dims(&r.body), (32, 32));
}

#[test]
fn create_then_upload_and_waiting_downloads() {
    let (h, _db) = start_with(&[]);
    let alice = common::register(&h, "alice");
    let bob = common::register(&h, "bob");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let v = ok(raw(
        &h,
        "POST",
        "/_matrix/media/v1/create",
        Some(&alice),
        None,
        b"",
    ));
    let (server, id) = split_mxc(v["content_uri"].as_str().unwrap());
    let expires = v["unused_expires_at"].as_i64().unwrap();
    assert!(expires > before + 23 * 3600 * 1000, "{expires}");

    // Not filled yet: 504 M_NOT_YET_UPLOADED once the wait is over.
    let r = get(
        &h,
        &format!("{V1}/download/{server}/{id}?timeout_ms=0"),
        Some(&alice),
    );
    assert_err(&r, 504, "M_NOT_YET_UPLOADED");
    let r = get(
        &h,
        &format!("{V1}/thumbnail/{server}/{id}?width=8&height=8&timeout_ms=100"),
        Some(&alice),
    );
    assert_err(&r, 504, "M_NOT_YET_UPLOADED");

    // A download waiting for the content gets it when it arrives.
    let addr = h.addr;
    let (path, tok) = (
        format!("{V1}/download/{server}/{id}?timeout_ms=20000"),
        alice.clone(),
    );
    let waiter = std::thread::spawn(move || raw_to(addr, "GET", &path, Some(&tok), None, b""));
    std::thread::sleep(Duration::from_millis(500));
    let fill = format!("/_matrix/media/v3/upload/{server}/{id}?filename=late.txt");
    // Only the user who reserved it may fill it.
    assert_err(
        &raw(&h, "PUT", &fill, Some(&bob), Some("text/plain"), b"no"),
        403,
        "M_FORBIDDEN",
    );
    let v = ok(raw(
        &h,
        "PUT",
        &fill,
        Some(&alice),
        Some("text/plain"),
        b"arrived late",
    ));
    assert_eq!(v, serde_json::json!({}));
    let r = waiter.join().unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"arrived late");
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"late.txt\"")
    );

    // Filled once, never again.
    assert_err(
        &raw(&h, "PUT", &fill, Some(&alice), Some("text/plain"), b"again"),
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    );
    // An id never reserved, and one of plain upload.
    assert_err(
        &raw(
            &h,
            "PUT",
            &format!("/_matrix/media/v3/upload/{server}/neverreserved"),
            Some(&alice),
            None,
            b"x",
        ),
        404,
        "M_NOT_FOUND",
    );
    let (_, plain) = upload(&h, &alice, "text/plain", None, b"plain");
    assert_err(
        &raw(
            &h,
            "PUT",
            &format!("/_matrix/media/v3/upload/{server}/{plain}"),
            Some(&alice),
            None,
            b"x",
        ),
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    );

    // At most 5 pending reservations per user.
    for _ in 0..5 {
        ok(raw(
            &h,
            "POST",
            "/_matrix/media/v1/create",
            Some(&alice),
            None,
            b"",
        ));
    }
    let r = raw(
        &h,
        "POST",
        "/_matrix/media/v1/create",
        Some(&alice),
        None,
        b"",
    );
    assert_err(&r, 429, "M_LIMIT_EXCEEDED");
    ok(raw(
        &h,
        "POST",
        "/_matrix/media/v1/create",
        Some(&bob),
        None,
        b"",
    ));
}

#[test]
fn upload_size_limit_is_413_and_larger_than_json_bodies() {
    let (h, _db) = start_with(&[
        ("HEARTH_MEDIA__MAX_UPLOAD_SIZE", "1000000"),
        ("HEARTH_HTTP__MAX_BODY_BYTES", "100000"),
    ]);
    let alice = common::register(&h, "alice");
    let v = ok(get(&h, &format!("{V1}/config"), Some(&alice)));
    assert_eq!(v["m.upload.size"], 1_000_000);

    // Over the server-wide body limit but within the upload limit: fine on
    // upload routes only.
    let body = noise(500_000, 2);
    let (server, id) = upload(&h, &alice, "application/octet-stream", None, &body);
    assert_eq!(
        get(&h, &format!("{V1}/download/{server}/{id}"), Some(&alice)).body,
        body
    );
    let r = raw(
        &h,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&alice),
        Some("application/json"),
        &body,
    );
    assert_err(&r, 413, "M_TOO_LARGE");

    // Over the upload limit: the whole body is sent, and the client still
    // reads a Matrix 413 rather than a reset.
    let big = noise(8_000_000, 3);
    let r = raw(
        &h,
        "POST",
        "/_matrix/media/v3/upload",
        Some(&alice),
        Some("application/octet-stream"),
        &big,
    );
    assert_err(&r, 413, "M_TOO_LARGE");
    let v = ok(raw(
        &h,
        "POST",
        "/_matrix/media/v1/create",
        Some(&alice),
        None,
        b"",
    ));
    let (server, id) = split_mxc(v["content_uri"].as_str().unwrap());
    let r = raw(
        &h,
        "PUT",
        &format!("/_matrix/media/v3/upload/{server}/{id}"),
        Some(&alice),
        None,
        &big,
    );
    assert_err(&r, 413, "M_TOO_LARGE");
    // The reservation is still open.
    ok(raw(
        &h,
        "PUT",
        &format!("/_matrix/media/v3/upload/{server}/{id}"),
        Some(&alice),
        None,
        b"small",
    ));
}

#[test]
fn thumbnails_crop_and_scale_real_images() {
    let (h, _db) = start_with(&[]);
    let alice = common::register(&h, "alice");
    let png = image_bytes(640, 480, ImageFormat::Png);
    let jpeg = image_bytes(800, 600, ImageFormat::Jpeg);
    let (server, p) = upload(&h, &alice, "image/png", Some("p.png"), &png);
    let (_, j) = upload(&h, &alice, "image/jpeg", None, &jpeg);
    let thumb = |id: &str, q: &str| {
        get(
            &h,
            &format!("{V1}/thumbnail/{server}/{id}?{q}"),
            Some(&alice),
        )
    };

    let r = thumb(&p, "width=96&height=96&method=crop");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert_eq!(dims(&r.body), (96, 96));
    assert_eq!(
        r.header("content-disposition"),
        Some("inline; filename=\"thumbnail.png\"")
    );
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    // Cached: the same bytes again.
    let again = thumb(&p, "width=96&height=96&method=crop");
    assert_eq!(again.body, r.body);

    let r = thumb(&p, "width=320&height=320&method=scale");
    assert_eq!(dims(&r.body), (320, 240));
    let r = thumb(&j, "width=320&height=240&method=scale");
    assert_eq!(r.header("content-type"), Some("image/jpeg"));
    assert_eq!(dims(&r.body), (320, 240));
    let r = thumb(&j, "width=32&height=32&method=crop");
    assert_eq!(dims(&r.body), (32, 32));
    // Default method is scale; never upscaled: the original comes back.
    let r = thumb(&p, "width=1000&height=1000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, png);

    // Not an image, whatever its Content-Type says.
    let (_, text) = upload(&h, &alice, "image/png", None, b"just some text");
    assert_err(&thumb(&text, "width=32&height=32"), 400, "M_UNKNOWN");
    // Bad parameters.
    assert_err(&thumb(&p, "height=32"), 400, "M_MISSING_PARAM");
    assert_err(&thumb(&p, "width=0&height=32"), 400, "M_INVALID_PARAM");
    assert_err(&thumb(&p, "width=x&height=32"), 400, "M_INVALID_PARAM");
    assert_err(
        &thumb(&p, "width=32&height=32&method=stretch"),
        400,
        "M_INVALID_PARAM",
    );
}

#[test]
fn media_survives_a_restart() {
    let db = TestCluster::shared().fresh_database();
    let opts = Opts::shards(2).env("HEARTH_DATABASE__URL", &db.url());
    let mut h = Hearth::start(opts.clone());
    let alice = common::register(&h, "alice");
    let body = noise(200_000, 4);
    let (server, id) = upload(&h, &alice, "application/pdf", Some("doc.pdf"), &body);
    let png = image_bytes(100, 100, ImageFormat::Png);
    let (_, p) = upload(&h, &alice, "image/png", None, &png);
    let t1 = get(
        &h,
        &format!("{V1}/thumbnail/{server}/{p}?width=32&height=32&method=crop"),
        Some(&alice),
    );
    assert_eq!(t1.status, 200);

    let data_dir = std::mem::replace(&mut h.data_dir, tempfile::tempdir().unwrap());
    drop(h);
    let h = Hearth::start_in(opts, data_dir);
    let r = get(&h, &format!("{V1}/download/{server}/{id}"), Some(&alice));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"doc.pdf\"")
    );
    let t2 = get(
        &h,
        &format!("{V1}/thumbnail/{server}/{p}?width=32&height=32&method=crop"),
        Some(&alice),
    );
    assert_eq!(t2.body, t1.body);
}
