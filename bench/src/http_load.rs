//! Closed-loop keep-alive HTTP load: each connection keeps one request in
//! flight, so latency is the server's and throughput is what it sustains.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::stats::{new_hist, Metric, Progress};
use crate::url::Target;

pub struct Load {
    pub connections: usize,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

type ThreadStats = Metric;

/// Runs the load; returns the merged metric of the measured window.
/// `progress` is bumped for every response (warm-up included).
pub fn run(target: &Target, load: Load, progress: Arc<Progress>) -> anyhow::Result<Metric> {
    let threads = load.threads.max(1);
    let start = Instant::now();
    let measure_from = start + load.warmup;
    let end = measure_from + load.duration;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hearth-bench\r\n\r\n",
        target.path, target.host_header
    )
    .into_bytes();

    let mut handles = Vec::new();
    for t in 0..threads {
        let conns = load.connections / threads + usize::from(t < load.connections % threads);
        let addr = target.addr;
        let request = request.clone();
        let progress = progress.clone();
        handles.push(std::thread::spawn(move || -> ThreadStats {
            let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let mut s = ThreadStats::default();
                    s.errors.insert(format!("runtime: {e}"), 1);
                    s.hist = new_hist();
                    return s;
                }
            };
            rt.block_on(async move {
                let stats = Rc::new(RefCell::new(ThreadStats::default()));
                let mut tasks = Vec::new();
                for _ in 0..conns {
                    let stats = stats.clone();
                    let request = request.clone();
                    let progress = progress.clone();
                    tasks.push(monoio::spawn(async move {
                        connection_loop(addr, request, measure_from, end, stats, progress).await
                    }));
                }
                for t in tasks {
                    t.await;
                }
                Rc::try_unwrap(stats)
                    .map(|c| c.into_inner())
                    .unwrap_or_default()
            })
        }));
    }
    let mut merged = Metric::default();
    for h in handles {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        merged.merge(&s);
    }
    Ok(merged)
}

async fn connection_loop(
    addr: std::net::SocketAddr,
    request: Vec<u8>,
    measure_from: Instant,
    end: Instant,
    stats: Rc<RefCell<ThreadStats>>,
    progress: Arc<Progress>,
) {
    let record_err = |what: String| {
        progress.errors.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= measure_from {
            *stats.borrow_mut().errors.entry(what).or_insert(0) += 1;
        }
    };
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut req = request;
    while Instant::now() < end {
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(e) => {
                    record_err(format!("connect: {}", e.kind()));
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let t0 = Instant::now();
        let (res, back) = s.write_all(req).await;
        req = back;
        if let Err(e) = res {
            record_err(format!("write: {}", e.kind()));
            stream = None;
            continue;
        }
        match read_response(s, &mut buf).await {
            Ok((status, keep)) => {
                let now = Instant::now();
                if (200..300).contains(&status) {
                    progress.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    progress.errors.fetch_add(1, Ordering::Relaxed);
                }
                if now >= measure_from && now < end {
                    let mut st = stats.borrow_mut();
                    if (200..300).contains(&status) {
                        st.ok += 1;
                        let us = now.duration_since(t0).as_micros().max(1) as u64;
                        st.hist.saturating_record(us);
                    } else {
                        *st.errors.entry(format!("status {status}")).or_insert(0) += 1;
                    }
                }
                if !keep {
                    stream = None;
                }
            }
            Err(e) => {
                record_err(e);
                stream = None;
            }
        }
    }
}

/// Read one response; returns (status, keep-alive). Leftover bytes stay in `buf`.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(u16, bool), String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = resp.code.unwrap_or(0);
                let mut len = 0usize;
                let mut keep = true;
                let mut chunked = false;
                for h in resp.headers.iter() {
                    if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        // Synapse (Twisted) answers /versions chunked.
                        chunked = h.value.eq_ignore_ascii_case(b"chunked");
                    } else if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .ok_or("bad content-length")?;
                    } else if h.name.eq_ignore_ascii_case("connection")
                        && h.value.eq_ignore_ascii_case(b"close")
                    {
                        keep = false;
                    }
                }
                if chunked {
                    buf.drain(..head_len);
                    crate::client::read_chunked(s, buf).await.map_err(|e| e.0)?;
                    return Ok((status, keep));
                }
                while buf.len() < head_len + len {
                    crate::client::read_more(s, buf).await.map_err(|e| e.0)?;
                }
                buf.drain(..head_len + len);
                return Ok((status, keep));
            }
            Ok(httparse::Status::Partial) => {
                crate::client::read_more(s, buf).await.map_err(|e| e.0)?
            }
            Err(e) => return Err(format!("parse: {e}")),
        }
    }
}
