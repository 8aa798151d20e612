//! Matrix scenarios: common flags, the load driver (threads of monoio
//! runtimes, a progress line, resource sampling), and the result report.
//! Each scenario sets up its own users and rooms through the client API
//! (`fixture.rs`), so it runs against any homeserver.

pub mod fed_common;
pub mod fed_fanout;
pub mod fed_ingest;
pub mod fed_join;
pub mod fixture;
pub mod keys;
pub mod media;
pub mod mixed;
pub mod send;
pub mod state_res;
pub mod sync;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{MetricReport, RunReport};
use crate::resources::{Resources, Watch};
use crate::stats::{Metric, Progress, Recorder, Window};
use crate::url::Target;

/// Flags every scenario takes. `users`, `rooms` and `connections` default
/// per scenario (see each subcommand's help).
#[derive(clap::Args, Clone, Debug)]
pub struct Common {
    /// Base URL of the homeserver, e.g. http://127.0.0.1:8008
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    pub url: String,
    /// Users to register (scenario default when absent).
    #[arg(long)]
    pub users: Option<usize>,
    /// Rooms to create (scenario default when absent).
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Concurrent connections doing the measured requests (scenario default when absent).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Load-generating threads, each a monoio runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seed for everything random (room sizes, action mix, user names).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The server's pid, for CPU and RSS figures from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The server's PostgreSQL postmaster pid (found under --server-pid when it runs its own).
    #[arg(long)]
    pub pg_pid: Option<u32>,
    /// Setup requests in flight at once (registration, rooms, joins, fill).
    #[arg(long, default_value_t = 16)]
    pub setup_concurrency: usize,
    /// Label for the report (default: the URL's host:port).
    #[arg(long)]
    pub label: Option<String>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl Common {
    pub fn window(&self) -> Window {
        Window::new(secs(self.warmup), secs(self.duration))
    }

    pub fn watch(&self) -> Watch {
        let mut w = Watch {
            server_pid: self.server_pid,
            pg_pid: self.pg_pid,
        };
        w.discover_pg();
        w
    }

    /// Unique per run so repeated runs against a persistent server don't collide.
    pub fn run_id(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut rng = fastrand::Rng::with_seed(self.seed ^ nanos as u64);
        (0..6).map(|_| char::from(b'a' + rng.u8(0..26))).collect()
    }

    pub fn params(
        &self,
        users: usize,
        rooms: usize,
        connections: usize,
    ) -> BTreeMap<String, String> {
        [
            ("users", users.to_string()),
            ("rooms", rooms.to_string()),
            ("connections", connections.to_string()),
            ("threads", self.threads.to_string()),
            ("warmup_s", self.warmup.to_string()),
            ("seed", self.seed.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Metrics that time the same responses as another metric (so they are not
/// requests of their own for the CPU-per-1,000-requests figures).
pub const DERIVED_METRICS: &[&str] = &["delivery-from-send"];

pub type TaskFuture = Pin<Box<dyn Future<Output = Recorder>>>;

/// Builds the tasks of one load thread: (thread index, window, progress).
pub type MakeTasks = Arc<dyn Fn(usize, Window, Arc<Progress>) -> Vec<TaskFuture> + Send + Sync>;

/// What a load run produced.
pub struct Measured {
    pub metrics: BTreeMap<String, Metric>,
    pub resources: Option<Resources>,
    pub elapsed: Duration,
}

/// Runs `make`'s tasks on `threads` monoio runtimes while the calling thread
/// prints progress once a second and samples the server's CPU and RSS.
pub fn drive(common: &Common, threads: usize, make: MakeTasks) -> anyhow::Result<Measured> {
    let window = common.window();
    let progress = Arc::new(Progress::default());
    let watch = common.watch();
    let mut handles = Vec::new();
    for t in 0..threads.max(1) {
        let make = make.clone();
        let progress = progress.clone();
        handles.push(std::thread::spawn(move || -> anyhow::Result<Recorder> {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build()
                .map_err(|e| anyhow::anyhow!("monoio runtime: {e}"))?;
            rt.block_on(async move {
                let mut all = Recorder::new(window, progress.clone());
                let tasks: Vec<_> = make(t, window, progress)
                    .into_iter()
                    .map(monoio::spawn)
                    .collect();
                for task in tasks {
                    all.merge(&task.await);
                }
                Ok(all)
            })
        }));
    }
    let (before, after, peak_rss) = monitor(common, &watch, &window, &progress);
    let mut merged = Recorder::new(window, progress);
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        merged.merge(&r);
    }
    let requests: u64 = merged
        .metrics
        .iter()
        .filter(|(name, _)| !DERIVED_METRICS.contains(&name.as_str()))
        .map(|(_, m)| m.ok + m.error_count())
        .sum();
    let resources = watch.resources(&before, &after, requests, peak_rss);
    Ok(Measured {
        metrics: merged.metrics,
        resources,
        elapsed: window.end - window.measure_from,
    })
}

/// The progress line and resource sampling alone, for loads that run
/// their own threads (`http`): (watch, before, after, peak RSS).
pub fn monitor_only(
    common: &Common,
    window: Window,
    progress: &Progress,
) -> (
    Watch,
    crate::resources::Snapshot,
    crate::resources::Snapshot,
    f64,
) {
    let watch = common.watch();
    let (b, a, p) = monitor(common, &watch, &window, progress);
    (watch, b, a, p)
}

type Monitored = (crate::resources::Snapshot, crate::resources::Snapshot, f64);

/// Progress line each second (stderr); CPU snapshots at the window's edges.
fn monitor(common: &Common, watch: &Watch, window: &Window, progress: &Progress) -> Monitored {
    let mut before = None;
    let mut peak_rss: f64 = 0.0;
    let mut last_ok = 0;
    let mut tick = window.start;
    loop {
        let now = Instant::now();
        if before.is_none() && now >= window.measure_from {
            before = Some(watch.snapshot());
        }
        if now >= window.end {
            break;
        }
        let mut next = (tick + Duration::from_secs(1)).min(window.end);
        if before.is_none() && window.measure_from < next {
            next = window.measure_from;
        } else {
            tick = next;
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        if now >= window.measure_from {
            peak_rss = peak_rss.max(watch.rss_mb());
        }
        let ok = progress.ok.load(Ordering::Relaxed);
        let err = progress.errors.load(Ordering::Relaxed);
        if !common.quiet {
            let phase = if now < window.measure_from {
                "warmup"
            } else {
                "measure"
            };
            let rss = if watch.server_pid.is_some() {
                format!("  server rss {:.1} MB", watch.rss_mb())
            } else {
                String::new()
            };
            eprintln!(
                "[{:>6.1}s {phase}] ok {ok} (+{}/s) errors {err}{rss}",
                now.duration_since(window.start).as_secs_f64(),
                ok - last_ok,
            );
        }
        last_ok = ok;
    }
    let after = watch.snapshot();
    let before = before.unwrap_or_else(|| after.clone());
    (before, after, peak_rss)
}

/// Awaits `fut` unless the window ends first (a parked long-poll must not
/// keep the run alive for 30 s); `None` means cut off at the end.
pub async fn until_end<T>(window: &Window, fut: impl Future<Output = T>) -> Option<T> {
    let left = window.end.saturating_duration_since(Instant::now());
    monoio::time::timeout(left + Duration::from_millis(50), fut)
        .await
        .ok()
}

/// Turns measured metrics into a report; `order` puts the headline first.
pub fn report(
    scenario: &str,
    common: &Common,
    target: &Target,
    server_header: Option<String>,
    params: BTreeMap<String, String>,
    measured: Measured,
    order: &[&str],
) -> RunReport {
    let mut metrics = Vec::new();
    for name in order {
        let m = measured.metrics.get(*name).cloned().unwrap_or_default();
        metrics.push(MetricReport::from_metric(name, &m, measured.elapsed));
    }
    for (name, m) in &measured.metrics {
        if !order.contains(&name.as_str()) {
            metrics.push(MetricReport::from_metric(name, m, measured.elapsed));
        }
    }
    RunReport {
        scenario: scenario.to_owned(),
        label: common
            .label
            .clone()
            .unwrap_or_else(|| target.host_header.clone()),
        target: common.url.clone(),
        server_header,
        params,
        duration_s: measured.elapsed.as_secs_f64(),
        metrics,
        resources: measured.resources,
        notes: Vec::new(),
    }
}

/// Runs a setup future on a runtime of its own on the calling thread.
pub fn setup<T>(
    _common: &Common,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| anyhow::anyhow!("monoio runtime: {e}"))?;
    rt.block_on(fut)
}
