//! What `GET /metrics` reports, in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DbLabel {
    pub job: String,
    pub database: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabel {
    pub name: String,
}

/// The labels of a series that has none, for a family whose series appears only once there
/// is something to say (an empty set renders without braces).
pub type NoLabels = Vec<(String, String)>;

type FloatGauge = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    pub snapshots: Family<JobLabel, Counter>,
    pub failed: Family<JobLabel, Counter>,
    pub duration: Family<JobLabel, Histogram, fn() -> Histogram>,
    pub bytes_read: Family<JobLabel, Counter>,
    pub bytes_added: Family<JobLabel, Counter>,
    pub bytes_stored: Family<JobLabel, Counter>,
    pub last_success: Family<JobLabel, Gauge>,
    pub repo_bytes: Gauge,
    pub repo_snapshots: Gauge,
    pub dedup_ratio: FloatGauge,
    pub gc_runs: Counter,
    pub gc_reclaimed: Counter,
    pub forgotten: Counter,
    pub follow_running: Family<DbLabel, Gauge>,
    pub follow_lag: Family<DbLabel, FloatGauge>,
    pub follow_log_bytes: Family<DbLabel, Gauge>,
    pub follow_transactions: Family<DbLabel, Gauge>,
    pub follow_checkpoints: Family<DbLabel, Gauge>,
    pub follow_fallbacks: Family<DbLabel, Gauge>,
    pub pg_newest_age: Family<NoLabels, FloatGauge>,
    pub pg_base_age: Family<NameLabel, FloatGauge>,
    pub pg_archived: Family<NoLabels, Counter>,
    pub pg_failed: Family<NoLabels, Counter>,
    pub pg_archive_ok: Family<NoLabels, Gauge>,
}

fn duration_buckets() -> Histogram {
    // 50 ms to about 7 minutes.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            snapshots: Family::default(),
            failed: Family::default(),
            duration: Family::new_with_constructor(duration_buckets),
            bytes_read: Family::default(),
            bytes_added: Family::default(),
            bytes_stored: Family::default(),
            last_success: Family::default(),
            repo_bytes: Gauge::default(),
            repo_snapshots: Gauge::default(),
            dedup_ratio: FloatGauge::default(),
            gc_runs: Counter::default(),
            gc_reclaimed: Counter::default(),
            forgotten: Counter::default(),
            follow_running: Family::default(),
            follow_lag: Family::default(),
            follow_log_bytes: Family::default(),
            follow_transactions: Family::default(),
            follow_checkpoints: Family::default(),
            follow_fallbacks: Family::default(),
            pg_newest_age: Family::default(),
            pg_base_age: Family::default(),
            pg_archived: Family::default(),
            pg_failed: Family::default(),
            pg_archive_ok: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "strata_snapshots",
            "Snapshots taken (including partial ones)",
            m.snapshots.clone(),
        );
        registry.register(
            "strata_snapshots_failed",
            "Snapshot runs that failed or were partial",
            m.failed.clone(),
        );
        registry.register(
            "strata_snapshot_duration_seconds",
            "Wall time of snapshot runs",
            m.duration.clone(),
        );
        registry.register(
            "strata_bytes_read",
            "Bytes read from the sources",
            m.bytes_read.clone(),
        );
        registry.register(
            "strata_bytes_added",
            "New bytes (before compression) added to the repository",
            m.bytes_added.clone(),
        );
        registry.register(
            "strata_bytes_stored",
            "New bytes (compressed) written to packs",
            m.bytes_stored.clone(),
        );
        registry.register(
            "strata_last_success_timestamp_seconds",
            "Unix time of the job's last successful snapshot",
            m.last_success.clone(),
        );
        registry.register(
            "strata_repository_bytes",
            "Bytes of packs, manifests and index",
            m.repo_bytes.clone(),
        );
        registry.register(
            "strata_repository_snapshots",
            "Snapshots in the repository",
            m.repo_snapshots.clone(),
        );
        registry.register(
            "strata_dedup_ratio",
            "Logical bytes of all snapshots over unique bytes",
            m.dedup_ratio.clone(),
        );
        registry.register("strata_gc_runs", "gc runs", m.gc_runs.clone());
        registry.register(
            "strata_gc_reclaimed_bytes",
            "Bytes gc reclaimed",
            m.gc_reclaimed.clone(),
        );
        registry.register(
            "strata_snapshots_forgotten",
            "Snapshots removed by retention policies",
            m.forgotten.clone(),
        );
        registry.register(
            "strata_follow_running",
            "1 while the database's follower runs",
            m.follow_running.clone(),
        );
        registry.register(
            "strata_follow_lag_seconds",
            "Seconds since the follower last read the database's log to its end",
            m.follow_lag.clone(),
        );
        registry.register(
            "strata_follow_log_bytes",
            "Size of the database's write-ahead log",
            m.follow_log_bytes.clone(),
        );
        registry.register(
            "strata_follow_transactions",
            "Transactions the running follower has copied since it started",
            m.follow_transactions.clone(),
        );
        registry.register(
            "strata_follow_checkpoints",
            "Checkpoints the running follower has run since it started",
            m.follow_checkpoints.clone(),
        );
        registry.register(
            "strata_follow_fallbacks",
            "Places in the log the running follower lost (each costs a full read)",
            m.follow_fallbacks.clone(),
        );
        registry.register(
            "strata_pg_archive_newest_age_seconds",
            "Seconds since the WAL archive's newest segment was archived",
            m.pg_newest_age.clone(),
        );
        registry.register(
            "strata_pg_base_backup_age_seconds",
            "Seconds since the newest PostgreSQL base backup of this name ended",
            m.pg_base_age.clone(),
        );
        registry.register(
            "strata_pg_archive_archived",
            "WAL files the server's archiver archived (pg_stat_archiver.archived_count)",
            m.pg_archived.clone(),
        );
        registry.register(
            "strata_pg_archive_failed",
            "Failed attempts of the server's archiver (pg_stat_archiver.failed_count)",
            m.pg_failed.clone(),
        );
        registry.register(
            "strata_pg_archive_ok",
            "1 while the WAL archive's checks find nothing wrong",
            m.pg_archive_ok.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn job(name: &str) -> JobLabel {
        JobLabel {
            job: name.to_string(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        let app = Metrics::job("app");
        m.snapshots.get_or_create(&app).inc();
        m.duration.get_or_create(&app).observe(0.3);
        m.dedup_ratio.set(2.5);
        let text = m.render();
        assert!(
            text.contains("strata_snapshots_total{job=\"app\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("strata_snapshot_duration_seconds_count{job=\"app\"} 1"),
            "{text}"
        );
        assert!(text.contains("strata_dedup_ratio 2.5"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        // A series without labels appears once set, without braces.
        assert!(
            !text.contains("strata_pg_archive_newest_age_seconds "),
            "{text}"
        );
        m.pg_newest_age.get_or_create(&Vec::new()).set(12.5);
        m.pg_failed.get_or_create(&Vec::new()).inc_by(2);
        let text = m.render();
        assert!(
            text.contains("\nstrata_pg_archive_newest_age_seconds 12.5\n"),
            "{text}"
        );
        assert!(
            text.contains("\nstrata_pg_archive_failed_total 2\n"),
            "{text}"
        );
    }
}
