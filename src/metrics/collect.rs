//! A scrape: every shard's snapshot over the mesh, merged, plus process
//! and database-backed families, encoded once.

use std::rc::Rc;
use std::time::Duration;

use super::local::{self, Counter, Gauge};
use super::{encode, process, requests, Families, Kind, Sample, Value};
use crate::shard_state::{on_shard, Here, ShardState};

/// How long a scrape waits for one shard (or the database) before leaving
/// its families out; Prometheus' default scrape timeout is 10 s.
const PART_TIMEOUT: Duration = Duration::from_secs(3);

fn shard_label(id: usize) -> Vec<(&'static str, String)> {
    vec![("shard", id.to_string())]
}

/// What `state`'s shard knows about itself; runs on that shard.
pub fn shard_families(state: &ShardState) -> Families {
    let mut f = Families::default();
    let id = state.info.id;
    let shard = || shard_label(id);
    requests::snapshot(&mut f);
    for (name, help, g) in [
        (
            "hearth_shard_connections",
            "HTTP connections open on the shard.",
            Gauge::Connections,
        ),
        (
            "hearth_shard_requests_in_flight",
            "HTTP requests being handled on the shard.",
            Gauge::Requests,
        ),
        (
            "hearth_shard_mesh_jobs_running",
            "Jobs from other shards running on the shard.",
            Gauge::MeshJobs,
        ),
    ] {
        f.scalar(name, help, Kind::Gauge, shard(), local::value(g) as f64);
    }
    f.scalar(
        "hearth_http_connections_moved_in_total",
        "HTTP connections moved to the shard from another (to their user's shard).",
        Kind::Counter,
        shard(),
        local::count(Counter::ConnectionsMovedIn) as f64,
    );
    f.scalar(
        "hearth_mesh_jobs_received_total",
        "Jobs from other shards started on the shard.",
        Kind::Counter,
        shard(),
        state
            .mesh
            .stats()
            .received
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    for (to, queued, cap) in state.mesh.outbound_occupancy() {
        let labels = vec![("from", id.to_string()), ("to", to.to_string())];
        f.scalar(
            "hearth_mesh_ring_queued",
            "Jobs waiting in the ring from one shard to another.",
            Kind::Gauge,
            labels.clone(),
            queued as f64,
        );
        f.scalar(
            "hearth_mesh_ring_capacity",
            "Capacity of the ring from one shard to another.",
            Kind::Gauge,
            labels,
            cap as f64,
        );
    }
    let gc = state.writer.stats();
    f.family(
        "hearth_db_group_commit_batch_size",
        "Writes per group-commit transaction.",
        Kind::Histogram,
    )
    .samples
    .push(Sample {
        labels: shard(),
        value: Value::Histogram(state.writer.batch_sizes()),
    });
    f.scalar(
        "hearth_db_group_commit_queued",
        "Writes waiting for a group-commit batch.",
        Kind::Gauge,
        shard(),
        state.writer.queued() as f64,
    );
    f.scalar(
        "hearth_db_group_commit_batches_in_flight",
        "Group-commit batches committing now.",
        Kind::Gauge,
        shard(),
        state.writer.batches_in_flight() as f64,
    );
    f.scalar(
        "hearth_db_group_commit_split_retries_total",
        "Group-commit batches that failed and were retried write by write.",
        Kind::Counter,
        shard(),
        gc.split_retries as f64,
    );
    let pool = state.db.usage();
    for (st, n) in [("busy", pool.busy), ("idle", pool.idle)] {
        f.scalar(
            "hearth_db_pool_connections",
            "Live database connections of the shard's pool, by state (busy: requests in flight on it).",
            Kind::Gauge,
            vec![("shard", id.to_string()), ("state", st.to_string())],
            n as f64,
        );
    }
    f.scalar(
        "hearth_db_pool_size",
        "Configured connections per shard.",
        Kind::Gauge,
        shard(),
        pool.size as f64,
    );
    f.scalar(
        "hearth_db_pool_in_flight",
        "Database operations queued or running through the shard's pool.",
        Kind::Gauge,
        shard(),
        pool.in_flight as f64,
    );
    f.scalar(
        "hearth_db_pool_waiters",
        "Database operations waiting for a live connection.",
        Kind::Gauge,
        shard(),
        pool.waiting as f64,
    );
    f.scalar(
        "hearth_db_pool_reconnects_total",
        "Database connections re-opened after a loss.",
        Kind::Counter,
        shard(),
        state.db.reconnects() as f64,
    );
    f.scalar(
        "hearth_sync_parked",
        "Long-polling /sync requests parked on the shard.",
        Kind::Gauge,
        shard(),
        state.notifier.parked_syncs() as f64,
    );
    for (gate, running, queued) in state.admission.load() {
        let labels = || vec![("shard", id.to_string()), ("gate", gate.to_owned())];
        f.scalar(
            "hearth_admission_running",
            "Expensive requests running on the shard, per admission gate.",
            Kind::Gauge,
            labels(),
            running as f64,
        );
        f.scalar(
            "hearth_admission_queued",
            "Expensive requests waiting for their turn, per admission gate.",
            Kind::Gauge,
            labels(),
            queued as f64,
        );
    }
    federation_queues(&mut f);
    f
}

/// Per destination (label `destination`: a server name; only active or
/// failing destinations have a queue).
fn federation_queues(f: &mut Families) {
    // Families exist even with no destination, so dashboards find them.
    f.family(
        "hearth_federation_queued_edus",
        "In-memory EDUs waiting for a destination.",
        Kind::Gauge,
    );
    f.family(
        "hearth_federation_backoff_seconds",
        "Current retry wait of a failing destination (0: healthy).",
        Kind::Gauge,
    );
    f.family(
        "hearth_federation_sending",
        "1 while a destination's transaction loop runs.",
        Kind::Gauge,
    );
    for q in crate::federation::sender::queue_stats() {
        let labels = vec![("destination", q.destination)];
        f.scalar(
            "hearth_federation_queued_edus",
            "",
            Kind::Gauge,
            labels.clone(),
            q.queued_edus as f64,
        );
        f.scalar(
            "hearth_federation_backoff_seconds",
            "",
            Kind::Gauge,
            labels.clone(),
            q.backoff.map_or(0.0, |d| d.as_secs_f64()),
        );
        f.scalar(
            "hearth_federation_sending",
            "",
            Kind::Gauge,
            labels,
            f64::from(u8::from(q.sending)),
        );
    }
}

/// Durable outbound backlog per destination (PDUs and EDUs in the
/// outboxes), one grouped query per scrape.
async fn outbox_backlog(state: &ShardState, f: &mut Families) -> bool {
    const SQL: &str = "SELECT 'pdu', destination, count(*)::bigint FROM federation_outbox \
         GROUP BY destination UNION ALL \
         SELECT 'edu', destination, count(*)::bigint FROM federation_edu_outbox \
         GROUP BY destination";
    f.family(
        "hearth_federation_pending_pdus",
        "PDUs committed and not yet acknowledged by a destination.",
        Kind::Gauge,
    );
    f.family(
        "hearth_federation_pending_durable_edus",
        "Durable EDUs (device lists, to-device) not yet acknowledged by a destination.",
        Kind::Gauge,
    );
    let rows = match monoio::time::timeout(PART_TIMEOUT, state.db.query(SQL, &[])).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: cannot read the federation outboxes");
            return false;
        }
        Err(_) => return false,
    };
    for row in rows {
        let (Ok(kind), Ok(dest), Ok(n)) = (
            row.get::<String>(0),
            row.get::<String>(1),
            row.get::<i64>(2),
        ) else {
            continue;
        };
        let name = if kind == "pdu" {
            "hearth_federation_pending_pdus"
        } else {
            "hearth_federation_pending_durable_edus"
        };
        f.scalar(name, "", Kind::Gauge, vec![("destination", dest)], n as f64);
    }
    true
}

/// The whole exposition, gathered from every shard by the one that got
/// the scrape.
pub async fn scrape(state: &Rc<ShardState>) -> String {
    let n = state.mesh.n_shards();
    let parts = futures_util::future::join_all((0..n).map(|t| {
        let mesh = state.mesh.clone();
        async move {
            let call = on_shard(
                &mesh,
                t,
                Here::Inline,
                |s| async move { shard_families(&s) },
            );
            (t, monoio::time::timeout(PART_TIMEOUT, call).await)
        }
    }))
    .await;
    let mut all = Families::default();
    let mut up = Families::default();
    for (t, part) in parts {
        let ok = match part {
            Ok(Ok(f)) => {
                all.merge(f);
                true
            }
            Ok(Err(e)) => {
                tracing::debug!(shard = t, error = %e, "metrics: shard did not answer");
                false
            }
            Err(_) => false,
        };
        up.scalar(
            "hearth_shard_scrape_ok",
            "1 if the shard answered this scrape in time (its families are missing otherwise).",
            Kind::Gauge,
            shard_label(t),
            f64::from(u8::from(ok)),
        );
    }
    all.merge(up);
    let db_ok = outbox_backlog(state, &mut all).await;
    all.scalar(
        "hearth_scrape_database_ok",
        "1 if this scrape could read the database-backed families.",
        Kind::Gauge,
        vec![],
        f64::from(u8::from(db_ok)),
    );
    all.scalar(
        "hearth_shards",
        "Shards (threads serving requests).",
        Kind::Gauge,
        vec![],
        n as f64,
    );
    match crate::blocking::run(process::collect).await {
        Ok(p) => all.merge(p),
        Err(e) => tracing::debug!(error = %e, "metrics: cannot read /proc"),
    }
    encode::encode(&all)
}
