//! The `drill` section (`cargo bench --bench lucid_bench -- drill`): what a restore drill of
//! the `everystore` data set costs. It plants the same `LUCID_BENCH_FULL_MB` data set, takes
//! a full backup through the actors, then drills it (`VerifyBackup` at `drilled`, what
//! `lucid-db backup verify ID --level drilled --json` sends) and prints each store's
//! `restore_ms` as the drill records it (restore into the scratch targets, the counts, the
//! sampled items and the specs compared, the targets removed), the total, and the drill
//! against the backup's own time in the same run. No stock tool restores these artifacts
//! cheaply in the same run (there is no `mongorestore` beside nx-27017, and the Redis and
//! Elasticsearch artifacts are lucid-db's own formats), so the times stand alone.

use std::time::{Duration, Instant};

use lucid_actors::backup::{
    BackupOutcome, BackupStatus, Level, RunStatus, StartBackup, Trigger, VerifyBackup,
};
use lucid_actors::{Config, Roles};
use serde_json::json;

/// Plants, backs up and drills the data set; answers the section's JSON.
pub(crate) fn drill_bench() -> serde_json::Value {
    let set = super::plant_full();
    let mut cfg = Config::defaults().unwrap_or_else(|e| panic!("defaults: {e}"));
    cfg.volumes.root = set.root.clone();
    cfg.state_dir = set.state.clone();
    cfg.redis.url = set.redis_s.url().into();
    cfg.mongodb.url = set.mongo_s.url().into();
    cfg.elasticsearch.url = set.es_s.url().into();
    cfg.supervisor.call_deadline = Duration::from_secs(120);
    let out = actix_rt::System::new().block_on(async {
        let handles = lucid_actors::start(&cfg, Roles::CLI);
        super::wait_ready(&handles, super::mongo_bootstrapped, Duration::from_secs(60)).await;
        let backup = handles.backup.clone().unwrap_or_else(|| panic!("backup"));
        let started = Instant::now();
        let id = backup
            .call(StartBackup {
                stores: vec![],
                trigger: Trigger::Api,
            })
            .await
            .unwrap_or_else(|e| panic!("start: {e}"));
        let report = loop {
            match backup.call(BackupStatus { id }).await {
                Ok(RunStatus::Finished(r)) => break r,
                Ok(RunStatus::Running { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("status: {e}"),
            }
        };
        let backup_s = started.elapsed().as_secs_f64();
        assert_eq!(report.outcome, BackupOutcome::Complete, "{report:?}");
        let started = Instant::now();
        let drilled = backup
            .call(VerifyBackup {
                id,
                level: Level::Drilled,
                identity: None,
            })
            .await
            .unwrap_or_else(|e| panic!("drill: {e}"));
        let drill_s = started.elapsed().as_secs_f64();
        assert!(drilled.passed(), "{:?}", drilled.first_failure);
        handles.shutdown(Duration::from_secs(5)).await;
        (report.bytes_in, backup_s, drill_s, drilled.result.stores)
    });
    let (bytes_in, backup_s, drill_s, stores) = out;
    let mb = bytes_in as f64 / 1e6;
    println!(
        "\ndrill of the everystore data set ({mb:.0} MB read by the backup; LUCID_BENCH_FULL_MB={:.0}):",
        set.mb
    );
    let mut restore_ms = 0;
    for (store, d) in &stores {
        restore_ms += d.restore_ms;
        println!(
            "  {store:<14} restore {:>8.2} s, {:>8} items restored, {:>4} compared one by one, {:>3} specs compared",
            d.restore_ms as f64 / 1000.0,
            d.restored,
            d.compared,
            d.specs_compared,
        );
        for what in &d.not_comparable {
            println!("  {store:<14} not comparable on this server: {what}");
        }
    }
    println!(
        "  total          restore {:.2} s (the drill, start to end: {drill_s:.2} s); the backup: {backup_s:.2} s; drill / backup {:.2}",
        restore_ms as f64 / 1000.0,
        drill_s / backup_s
    );
    json!({
        "data_set_mb": mb,
        "backup_seconds": backup_s,
        "drill_seconds": drill_s,
        "drill_per_backup": drill_s / backup_s,
        "restore_ms_total": restore_ms,
        "stores": stores,
    })
}
