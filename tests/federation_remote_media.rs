//! End-to-end: media across servers. Two real hearths federate over
//! loopback TLS: a user of one downloads (and thumbnails) media uploaded
//! on the other, fetched over `/_matrix/federation/v1/media/download`
//! (multipart/mixed) and then served from the local cache, even once the
//! origin is gone; unknown remote media is 404 `M_NOT_FOUND`, an
//! unreachable server 502. A thumbnail of remote media whose original is
//! not cached is the origin's (`/federation/v1/media/thumbnail`), cached
//! by itself; an origin without that endpoint gets its original fetched
//! and thumbnailed here. A fake server (its own key) fetches hearth's
//! media over federation and gets the multipart answer; a fake server's
//! answers exercise the redirect, the size limit and malformed answers.

mod common;

use std::io::{Cursor, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::fake_server::{raw_answer, raw_bytes_answer, FakeServer};
use common::fed::{client_of, free_port, runtime, start_home, start_home_with};
use common::{assert_err, ok, read_response, register_user, Resp};
use image::{DynamicImage, ImageFormat};
use serde_json::json;

fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    ct: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n"
    );
    if let Some(ct) = ct {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s, false)
}

fn upload(addr: std::net::SocketAddr, token: &str, ct: &str, name: &str, body: &[u8]) -> String {
    let v = ok(raw(
        addr,
        "POST",
        &format!("/_matrix/media/v3/upload?filename={name}"),
        token,
        Some(ct),
        body,
    ));
    let uri = v["content_uri"].as_str().unwrap();
    uri.rsplit('/').next().unwrap().to_owned()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
        .unwrap();
    out
}

#[test]
fn remote_media_is_fetched_once_and_cached() {
    let origin = start_home();
    let local = start_home();
    let alice = register_user(&origin.h, "alice");
    let bob = register_user(&local.h, "bob");
    let text = b"hello from the other server".to_vec();
    let text_id = upload(
        origin.h.addr,
        &alice.token,
        "text/plain",
        "hello.txt",
        &text,
    );
    let image = png(64, 48);
    let image_id = upload(origin.h.addr, &alice.token, "image/png", "pic.png", &image);

    let download = |id: &str| {
        raw(
            local.h.addr,
            "GET",
            &format!("/_matrix/client/v1/media/download/{}/{id}", origin.name),
            &bob.token,
            None,
            b"",
        )
    };
    let r = download(&text_id);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, text);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(
        r.header("content-disposition")
            .is_some_and(|d| d.contains("hello.txt")),
        "{:?}",
        r.header("content-disposition")
    );
    let thumb = raw(
        local.h.addr,
        "GET",
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}/{image_id}?width=32&height=24&method=scale",
            origin.name
        ),
        &bob.token,
        None,
        b"",
    );
    assert_eq!(
        thumb.status,
        200,
        "{}",
        String::from_utf8_lossy(&thumb.body)
    );
    let t = image::load_from_memory(&thumb.body).unwrap();
    assert!(t.width() <= 64 && t.height() <= 48);

    // Unknown media on a reachable server.
    let missing = download("NoSuchMediaHere");
    assert_err(&missing, 404, "M_NOT_FOUND");

    // The origin goes away: what was fetched is served from the cache.
    let origin_name = origin.name.clone();
    drop(origin);
    let again = raw(
        local.h.addr,
        "GET",
        &format!("/_matrix/client/v1/media/download/{origin_name}/{text_id}"),
        &bob.token,
        None,
        b"",
    );
    assert_eq!(again.status, 200);
    assert_eq!(again.body, text);
    // The thumbnail was the origin's, cached by itself: the original was
    // never fetched, so only the thumbnail outlives the origin.
    let thumb_again = raw(
        local.h.addr,
        "GET",
        &format!(
            "/_matrix/client/v1/media/thumbnail/{origin_name}/{image_id}?width=32&height=24&method=scale"
        ),
        &bob.token,
        None,
        b"",
    );
    assert_eq!(thumb_again.status, 200);
    assert_eq!(thumb_again.body, thumb.body);
    let full = raw(
        local.h.addr,
        "GET",
        &format!("/_matrix/client/v1/media/download/{origin_name}/{image_id}"),
        &bob.token,
        None,
        b"",
    );
    assert_err(&full, 502, "M_UNKNOWN");

    // An unreachable server is 502.
    let dead = format!("localhost:{}", free_port());
    let r = raw(
        local.h.addr,
        "GET",
        &format!("/_matrix/client/v1/media/download/{dead}/abc"),
        &bob.token,
        None,
        b"",
    );
    assert_err(&r, 502, "M_UNKNOWN");
}

#[test]
fn hearth_serves_its_media_over_federation() {
    let home = start_home();
    let fake = FakeServer::start(31);
    let alice = register_user(&home.h, "alice");
    let image = png(20, 10);
    let id = upload(home.h.addr, &alice.token, "image/png", "p.png", &image);
    // A client per runtime: pooled connections belong to the runtime.
    let get = |path: String| {
        let fed = client_of(&fake);
        runtime().block_on(async { fed.request(&home.name, "GET", &path, None).await.unwrap() })
    };
    let r = get(format!("/_matrix/federation/v1/media/download/{id}"));
    assert_eq!(r.status, 200);
    let boundary = hearth::media::multipart::boundary(r.header("content-type").unwrap()).unwrap();
    match hearth::media::multipart::parse(&r.body, &boundary).unwrap() {
        hearth::media::multipart::Part::Content {
            bytes,
            content_type,
            ..
        } => {
            assert_eq!(&bytes[..], &image[..]);
            assert_eq!(content_type.as_deref(), Some("image/png"));
        }
        other => panic!("{other:?}"),
    }
    let r = get(format!(
        "/_matrix/federation/v1/media/thumbnail/{id}?width=10&height=5&method=crop"
    ));
    assert_eq!(r.status, 200);
    let boundary = hearth::media::multipart::boundary(r.header("content-type").unwrap()).unwrap();
    let Ok(hearth::media::multipart::Part::Content { bytes, .. }) =
        hearth::media::multipart::parse(&r.body, &boundary)
    else {
        panic!("no thumbnail part")
    };
    let t = image::load_from_memory(&bytes).unwrap();
    assert_eq!((t.width(), t.height()), (10, 5));
    // Unknown media, and unsigned requests.
    let r = get("/_matrix/federation/v1/media/download/NoSuchMedia".into());
    assert_eq!(r.status, 404);
    let fed = client_of(&fake);
    let unsigned = runtime().block_on(async {
        fed.get_unsigned(
            &home.name,
            &format!("/_matrix/federation/v1/media/download/{id}"),
            1 << 20,
        )
        .await
        .unwrap()
    });
    assert_eq!(unsigned.status, 401);
}

/// The multipart answer of a remote server, with `part` as its second part.
fn multipart(part: &str) -> serde_json::Value {
    let body = format!(
        "--XyZ\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--XyZ\r\n{part}\r\n--XyZ--\r\n"
    );
    raw_answer("multipart/mixed; boundary=XyZ", &body)
}

#[test]
fn remote_answers_redirects_and_limits() {
    let home = start_home_with(&[("HEARTH_MEDIA__MAX_UPLOAD_SIZE", "1000")]);
    let fake = FakeServer::start(32);
    let bob = register_user(&home.h, "bob");
    let cdn = format!("https://localhost:{}/cdn/file.txt", fake.port);
    let big = "x".repeat(2000);
    fake.handle(move |r| {
        let p = r.path.as_str();
        let media = "/_matrix/federation/v1/media/download/";
        if p.starts_with(&format!("{media}direct")) {
            return Some((
                200,
                multipart(
                    "Content-Type: text/plain\r\n\
                     Content-Disposition: attachment; filename=\"d.txt\"\r\n\r\ndirect bytes",
                ),
            ));
        }
        if p.starts_with(&format!("{media}redirected")) {
            return Some((200, multipart(&format!("Location: {cdn}\r\n"))));
        }
        if p.starts_with(&format!("{media}big")) {
            return Some((
                200,
                multipart(&format!("Content-Type: text/plain\r\n\r\n{big}")),
            ));
        }
        if p.starts_with(&format!("{media}slow")) {
            std::thread::sleep(Duration::from_millis(700));
            return Some((200, multipart("Content-Type: text/plain\r\n\r\nslow bytes")));
        }
        if p.starts_with(&format!("{media}junk")) {
            return Some((200, json!({"not": "multipart"})));
        }
        if p == "/cdn/file.txt" {
            return Some((200, raw_answer("text/plain", "bytes from the cdn")));
        }
        None
    });
    let get = |id: &str| {
        raw(
            home.h.addr,
            "GET",
            &format!("/_matrix/client/v1/media/download/{}/{id}", fake.name),
            &bob.token,
            None,
            b"",
        )
    };
    let r = get("direct");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"direct bytes");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.header("content-disposition").unwrap().contains("d.txt"));
    // Served from the cache: no second federation request.
    assert_eq!(get("direct").body, b"direct bytes");
    assert_eq!(
        fake.requests("/_matrix/federation/v1/media/download/direct")
            .len(),
        1
    );
    // The signed request, then the redirect followed once, unsigned.
    let r = get("redirected");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, b"bytes from the cdn");
    assert_eq!(fake.requests("/cdn/file.txt").len(), 1);
    // Clients asking at once share the fetch (one per shard at most).
    let addr = home.h.addr;
    let path = format!("/_matrix/client/v1/media/download/{}/slow", fake.name);
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (path, token) = (path.clone(), bob.token.clone());
            std::thread::spawn(move || raw(addr, "GET", &path, &token, None, b""))
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap().body, b"slow bytes");
    }
    let fetches = fake
        .requests("/_matrix/federation/v1/media/download/slow")
        .len();
    assert!((1..=2).contains(&fetches), "{fetches} fetches");
    assert_err(&get("big"), 502, "M_TOO_LARGE");
    assert_err(&get("junk"), 502, "M_UNKNOWN");
    assert_err(&get("absent"), 404, "M_NOT_FOUND");
}

/// An origin without the federation thumbnail endpoint (404
/// `M_UNRECOGNIZED`): the original is fetched and thumbnailed here; one
/// that says the media is unknown is a 404 without a download; one whose
/// original is cached here is not asked at all.
#[test]
fn remote_thumbnail_falls_back_to_the_original() {
    let home = start_home();
    let fake = FakeServer::start(33);
    let bob = register_user(&home.h, "bob");
    let image = png(64, 48);
    let mut body = b"--XyZ\r\nContent-Type: application/json\r\n\r\n{}\r\n--XyZ\r\n\
        Content-Type: image/png\r\n\r\n"
        .to_vec();
    body.extend_from_slice(&image);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    fake.handle(move |r| {
        let p = r.path.as_str();
        if p.starts_with("/_matrix/federation/v1/media/thumbnail/gone") {
            return Some((404, json!({"errcode": "M_NOT_FOUND", "error": "no"})));
        }
        if p.starts_with("/_matrix/federation/v1/media/download/pic") {
            return Some((
                200,
                raw_bytes_answer("multipart/mixed; boundary=XyZ", &body),
            ));
        }
        None
    });
    let thumb = |id: &str| {
        raw(
            home.h.addr,
            "GET",
            &format!(
                "/_matrix/client/v1/media/thumbnail/{}/{id}?width=32&height=24&method=scale",
                fake.name
            ),
            &bob.token,
            None,
            b"",
        )
    };
    let t = thumb("pic");
    assert_eq!(t.status, 200, "{}", String::from_utf8_lossy(&t.body));
    let img = image::load_from_memory(&t.body).unwrap();
    assert!(
        img.width() <= 32 && img.height() <= 24,
        "{}x{}",
        img.width(),
        img.height()
    );
    assert_eq!(
        fake.requests("/_matrix/federation/v1/media/thumbnail/pic")
            .len(),
        1
    );
    assert_eq!(
        fake.requests("/_matrix/federation/v1/media/download/pic")
            .len(),
        1
    );
    // Another size: the original is cached now, so it is made here.
    let t = raw(
        home.h.addr,
        "GET",
        &format!(
            "/_matrix/client/v1/media/thumbnail/{}/pic?width=16&height=12&method=crop",
            fake.name
        ),
        &bob.token,
        None,
        b"",
    );
    assert_eq!(t.status, 200, "{}", String::from_utf8_lossy(&t.body));
    assert_eq!(
        fake.requests("/_matrix/federation/v1/media/thumbnail/pic")
            .len(),
        1
    );
    assert_err(&thumb("gone"), 404, "M_NOT_FOUND");
    assert!(fake
        .requests("/_matrix/federation/v1/media/download/gone")
        .is_empty());
}
