//! `media`: N users each uploading a file (`POST /_matrix/media/v3/upload`,
//! 1 MiB by default, unique bytes each time so no upload is deduplicated)
//! and downloading it back over the authenticated
//! `GET /_matrix/client/v1/media/download` (issue 11's media benchmark).
//! Headlines: uploads/s and downloads/s, with MB/s in the notes; an upload's
//! 200 comes after the file and its row are durable.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{fixture, Common, MakeTasks, TaskFuture};
use crate::client::Conn;
use crate::matrix::ApiError;
use crate::report::RunReport;
use crate::stats::Recorder;
use crate::url::Target;

#[derive(clap::Args, Clone, Debug)]
pub struct MediaArgs {
    #[command(flatten)]
    pub common: Common,
    /// Bytes of each uploaded file.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub file_bytes: usize,
}

pub const DEFAULT_USERS: usize = 8;

pub fn run(args: &MediaArgs) -> anyhow::Result<RunReport> {
    let c = &args.common;
    let target = Target::parse(&c.url)?;
    let users = c.users.unwrap_or(DEFAULT_USERS).max(1);
    let conns = c.connections.unwrap_or(users).max(1);
    let run_id = c.run_id();
    let fx = super::setup(
        c,
        fixture::build(
            &target,
            &run_id,
            users,
            fixture::uniform(users, 1),
            c.setup_concurrency,
        ),
    )?;
    let server_header = fx.server_header.clone();
    let fx = Arc::new(fx);
    let size = args.file_bytes.max(16);
    let threads = c.threads.max(1);
    let make: MakeTasks = Arc::new(move |t, window, progress| {
        (t..conns)
            .step_by(threads)
            .map(|i| {
                let (fx, target) = (fx.clone(), target.clone());
                let progress = progress.clone();
                Box::pin(async move {
                    let mut rec = Recorder::new(window, progress);
                    let user = &fx.users[i % fx.users.len()];
                    let mut conn = Conn::new(target.addr, &target.host_header);
                    let mut body = vec![b'm'; size];
                    let mut seq = 0u64;
                    while !window.over() {
                        seq += 1;
                        // Unique content: connection and sequence up front.
                        body[..8].copy_from_slice(&(i as u64).to_le_bytes());
                        body[8..16].copy_from_slice(&seq.to_le_bytes());
                        let t0 = Instant::now();
                        let uri = match upload(&mut conn, &user.token, &body).await {
                            Ok(u) => {
                                rec.ok("upload", t0.elapsed());
                                u
                            }
                            Err(e) => {
                                rec.error("upload", &e.key());
                                continue;
                            }
                        };
                        let t0 = Instant::now();
                        match download(&mut conn, &user.token, &uri, size).await {
                            Ok(()) => rec.ok("download", t0.elapsed()),
                            Err(e) => rec.error("download", &e.key()),
                        }
                    }
                    rec
                }) as TaskFuture
            })
            .collect()
    });
    let measured = super::drive(c, threads, make)?;
    let mut params = c.params(users, 0, conns);
    params.remove("rooms");
    params.insert("file_bytes".into(), size.to_string());
    let mb = size as f64 / 1e6;
    let mut report = super::report(
        "media",
        c,
        &Target::parse(&c.url)?,
        server_header,
        params,
        measured,
        &["upload", "download"],
    );
    let notes: Vec<String> = report
        .metrics
        .iter()
        .map(|m| format!("{}: {:.1} MB/s", m.name, m.rate * mb))
        .collect();
    report.notes.extend(notes);
    Ok(report)
}

/// Uploads `body`; returns `server/media_id` of its `mxc://` URI.
async fn upload(conn: &mut Conn, token: &str, body: &[u8]) -> Result<String, ApiError> {
    let r = conn
        .request("POST", "/_matrix/media/v3/upload", Some(token), Some(body))
        .await
        .map_err(ApiError::Transport)?;
    if r.status != 200 {
        return Err(status(r.status, &r.body));
    }
    let v: Value =
        serde_json::from_slice(&r.body).map_err(|e| ApiError::Body(format!("json: {e}")))?;
    v.get("content_uri")
        .and_then(Value::as_str)
        .and_then(|u| u.strip_prefix("mxc://"))
        .map(str::to_owned)
        .ok_or_else(|| ApiError::Body("no content_uri".into()))
}

async fn download(conn: &mut Conn, token: &str, mxc: &str, size: usize) -> Result<(), ApiError> {
    let path = format!("/_matrix/client/v1/media/download/{mxc}");
    let r = conn
        .request("GET", &path, Some(token), None)
        .await
        .map_err(ApiError::Transport)?;
    if r.status != 200 {
        return Err(status(r.status, &r.body));
    }
    if r.body.len() != size {
        return Err(ApiError::Body(format!(
            "{} bytes, not {size}",
            r.body.len()
        )));
    }
    Ok(())
}

fn status(code: u16, body: &[u8]) -> ApiError {
    let errcode = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errcode")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    ApiError::Status(code, errcode)
}
