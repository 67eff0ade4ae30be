//! The scheduler against the real thing: each job's tick reaches its real actor — a backup on
//! disk that lists, its verification, retention, the index lifecycle on osmem-server, volume
//! maintenance and usage, the health summary against a real Redis — and the operator's side:
//! `lucid-db schedule ls|history|run` and `config check`. The slot, catch-up, overlap and clock
//! logic is tested with a clock the test moves in `actors/scheduler.rs`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lucid_actors::backup::{
    BackupOutcome, BackupStatus, Level, ListBackups, RunStatus, StartBackup, StoreSelector,
    Trigger, VerifyBackup,
};
use lucid_actors::clock::{Clock, ManualClock, SystemClock};
use lucid_actors::config::ByteSize;
use lucid_actors::scheduler::{
    BackedUpIndices, JobName, Options, Peers, RunOutcome, RunRecord, RunTrigger, SchedulerActor,
    SchedulerHandle,
};
use lucid_actors::volume::{CreateVolume, VolumeName};
use lucid_actors::{Config, Handles, Roles, events};
use lucid_testkit::{Daemon, Server};

use crate::common::fast_config;

const BIN: &str = env!("CARGO_BIN_EXE_lucid-db");

/// Every store off, the data root and the state directory in `dir`.
fn config_in(dir: &Path) -> Config {
    let mut c = fast_config("redis://127.0.0.1:1");
    c.redis.enabled = false;
    c.volumes.root = dir.join("volumes");
    c.state_dir = dir.join("state");
    std::fs::create_dir_all(&c.volumes.root).expect("mkdir root");
    c
}

/// A scheduler with no triggers over `handles`' actors: the test sends the ticks. Its slots
/// come from `clock`; the system clock counts as synchronised.
fn scheduler(
    config: &Config,
    handles: &Handles,
    clock: Arc<dyn Clock>,
    gate: Option<BackedUpIndices>,
) -> SchedulerHandle {
    let peers = Peers {
        registry: handles.registry.clone(),
        backup: handles.backup.clone(),
        search: handles.search.clone(),
        volumes: handles.volumes.clone(),
        backed_up_indices: gate,
    };
    SchedulerActor::start_with(
        config,
        peers,
        Options {
            clock,
            synchronised: Arc::new(|| true),
            triggers: false,
            catch_up: false,
            backup_poll: Duration::from_millis(20),
            ..Options::daemon()
        },
    )
}

/// Waits until `job` has `n` runs recorded, polling (real servers work in real time).
async fn runs(s: &SchedulerHandle, job: JobName, n: usize) -> Vec<RunRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let h = s.history(job).await.expect("history");
        if h.len() >= n {
            return h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{job}: {n} runs never recorded: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `job`'s tick and answers its run once recorded.
async fn tick(s: &SchedulerHandle, job: JobName) -> RunRecord {
    let before = s.history(job).await.expect("history").len();
    assert!(s.tick(job), "mailbox full");
    runs(s, job, before + 1).await.remove(before)
}

fn assert_ok(r: &RunRecord) {
    assert_eq!(r.outcome, RunOutcome::Ok, "{r:?}");
    assert_eq!(r.trigger, RunTrigger::Schedule);
    assert!(r.slot.is_some());
}

/// The run of `job` in progress.
async fn running(s: &SchedulerHandle, job: JobName) -> Option<lucid_actors::scheduler::Running> {
    s.jobs()
        .await
        .expect("jobs")
        .into_iter()
        .find(|j| j.job == job)
        .and_then(|j| j.running)
}

async fn stop(s: SchedulerHandle) {
    let _ = s.addr().send(lucid_actors::supervisor::Shutdown).await;
    while s.addr().connected() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Each job's tick reaches its real actor

#[actix_rt::test]
async fn backup_verify_and_retention_ticks_back_up_verify_and_prune_on_disk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = config_in(tmp.path());
    // Retention: no age rule, the newest backup kept, and the newest good copy.
    c.backup.retention_days = 0;
    c.backup.keep_last = 1;
    let chunks = c.volumes.root.join("chunks");
    std::fs::create_dir_all(chunks.join("a")).expect("mkdir");
    std::fs::write(chunks.join("a/block"), vec![7u8; 100_000]).expect("write");
    // Before the actors start: their threads record into the captures open then.
    let cap = events::capture();
    let handles = lucid_actors::start(&c, Roles::CLI);
    let backup = handles.backup.clone().expect("backup actor");
    let s = scheduler(&c, &handles, Arc::new(SystemClock), None);

    // The backup tick makes a backup, and the run lasts as long as the backup.
    let run = tick(&s, JobName::Backup).await;
    assert_ok(&run);
    let listed = backup.call(ListBackups).await.expect("list");
    assert_eq!(listed.len(), 1);
    let first = listed[0].manifest.id;
    assert_eq!(listed[0].manifest.trigger, Trigger::Schedule);
    assert!(run.detail.contains(&first.to_string()), "{}", run.detail);
    assert!(run.ended >= listed[0].manifest.created, "{run:?}");
    assert_eq!(listed[0].effective_level(), None);
    let completed = cap.named("job.completed");
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0].field("job"), Some("backup"));

    // Two more backups (by hand, as an operator would); the verify tick verifies the newest
    // unverified one at backup.min_level (checksummed: the daemon has no identity) — and
    // the ones between it and the newest good copy, none here yet but all three.
    for _ in 0..2 {
        let id = backup
            .call(StartBackup {
                stores: vec![],
                trigger: Trigger::Cli,
            })
            .await
            .expect("start");
        // Wait for the run to finish (listed is not enough: the run still holds the backup
        // lock for a moment after its manifest is written, and the next start would be busy).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !matches!(
            backup.call(BackupStatus { id }).await.expect("status"),
            RunStatus::Finished(_)
        ) {
            assert!(std::time::Instant::now() < deadline, "{id} never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The middle one verified by hand: the verify tick takes only the newest.
    let listed = backup.call(ListBackups).await.expect("list");
    let ids: Vec<_> = listed.iter().map(|e| e.manifest.id).collect();
    backup
        .call(VerifyBackup {
            id: ids[1],
            level: Level::Checksummed,
            identity: None,
        })
        .await
        .expect("verify");
    let run = tick(&s, JobName::Verify).await;
    assert_ok(&run);
    assert!(run.detail.contains(&ids[2].to_string()), "{}", run.detail);
    let levels: Vec<Option<Level>> = backup
        .call(ListBackups)
        .await
        .expect("list")
        .iter()
        .map(|e| e.effective_level())
        .collect();
    assert_eq!(
        levels,
        [None, Some(Level::Checksummed), Some(Level::Checksummed)],
        "only the newest was verified by the tick"
    );

    // The retention tick prunes: the newest is kept (keep_last 1, and the newest good copy
    // of everything it holds), the two older ones expire.
    let run = tick(&s, JobName::Retention).await;
    assert_ok(&run);
    assert!(run.detail.starts_with("deleted 2,"), "{}", run.detail);
    let after: Vec<_> = backup
        .call(ListBackups)
        .await
        .expect("list")
        .iter()
        .map(|e| e.manifest.id)
        .collect();
    assert_eq!(after, ids[2..]);
    assert!(!after.contains(&first));
    assert_eq!(cap.named("backup.pruned").len(), 1);
    handles.shutdown(Duration::from_secs(5)).await;
}

/// A search actor on osmem-server, through `start`.
fn search_config(dir: &Path, server: &Server) -> Config {
    let mut c = config_in(dir);
    c.elasticsearch.enabled = true;
    c.elasticsearch.url = server.url().into();
    c.elasticsearch.lifecycle_delete = true;
    c
}

/// A plain client, for looking at the cluster (never through the actor).
fn client(server: &Server) -> elasticsearch::Elasticsearch {
    let transport =
        elasticsearch::http::transport::Transport::single_node(&server.url()).expect("transport");
    elasticsearch::Elasticsearch::new(transport)
}

async fn request(server: &Server, method: elasticsearch::http::Method, path: &str) -> String {
    let r = client(server)
        .send(
            method,
            path,
            elasticsearch::http::headers::HeaderMap::new(),
            None::<&()>,
            None::<String>,
            None,
        )
        .await
        .expect("request");
    assert!(r.status_code().is_success(), "{path}: {}", r.status_code());
    r.text().await.expect("body")
}

async fn indices(server: &Server) -> BTreeSet<String> {
    let body = request(
        server,
        elasticsearch::http::Method::Get,
        "/_cat/indices/lucid-*?format=json&h=index",
    )
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).expect("json");
    rows.iter()
        .filter_map(|r| r["index"].as_str().map(str::to_owned))
        .collect()
}

/// The real gate: an expired index is deleted only once a backup of it, exported while it
/// was write-blocked, has been verified to `backup.min_level`; a copy taken while the index
/// still took writes does not count, however well verified.
#[actix_rt::test]
async fn an_expired_index_is_deleted_only_after_a_verified_write_blocked_backup_of_it() {
    let server = lucid_testkit::elasticsearch();
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = search_config(tmp.path(), &server);
    let handles = lucid_actors::start(&c, Roles::CLI);
    handles
        .registry
        .wait_up(
            lucid_actors::Backend::Elasticsearch,
            Duration::from_secs(10),
        )
        .await;
    let backup = handles.backup.clone().expect("backup actor");
    let (blocks, sessions) = ("lucid-blocks-2020.01", "lucid-sessions-2020.01");
    for index in [blocks, sessions] {
        request(
            &server,
            elasticsearch::http::Method::Put,
            &format!("/{index}"),
        )
        .await;
    }
    let backed_up = |stores: &str| {
        let backup = backup.clone();
        let stores: Vec<StoreSelector> = vec![stores.parse().expect("selector")];
        async move {
            let id = backup
                .call(StartBackup {
                    stores,
                    trigger: Trigger::Cli,
                })
                .await
                .expect("start");
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match backup.call(BackupStatus { id }).await.expect("status") {
                    RunStatus::Finished(r) => {
                        assert_eq!(r.outcome, BackupOutcome::Complete, "{r:?}");
                        break;
                    }
                    RunStatus::Running { .. } => {
                        assert!(std::time::Instant::now() < deadline, "{id} never ended");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            id
        }
    };
    let verified = |id| {
        let backup = backup.clone();
        async move {
            let report = backup
                .call(VerifyBackup {
                    id,
                    level: Level::Checksummed,
                    identity: None,
                })
                .await
                .expect("verify");
            assert!(report.passed(), "{report:?}");
        }
    };
    // sessions is backed up and verified while it still takes writes.
    verified(backed_up(&format!("elasticsearch:{sessions}")).await).await;

    let gate = backup.backed_up_indices_gate();
    let s = scheduler(&c, &handles, Arc::new(SystemClock), Some(gate.clone()));
    // First tick: both expired, neither backed up write-blocked: both kept, and frozen.
    let run = tick(&s, JobName::Lifecycle).await;
    assert_ok(&run);
    assert!(run.detail.contains("kept 2"), "{}", run.detail);

    // blocks backed up now (write-blocked), not verified yet: still kept.
    let id = backed_up(&format!("elasticsearch:{blocks}")).await;
    assert!(gate().await.expect("gate").is_empty());
    stop(s).await;
    let clock = Arc::new(ManualClock::new(Utc::now() + chrono::Duration::hours(1)));
    let s = scheduler(&c, &handles, clock.clone(), Some(gate.clone()));
    assert_ok(&tick(&s, JobName::Lifecycle).await);
    assert!(indices(&server).await.contains(blocks));

    // Verified: the gate opens for blocks alone; the next hour's tick deletes it.
    verified(id).await;
    assert_eq!(
        gate().await.expect("gate"),
        BTreeSet::from([blocks.to_owned()])
    );
    clock.advance(chrono::Duration::hours(1));
    assert_ok(&tick(&s, JobName::Lifecycle).await);
    let now = indices(&server).await;
    assert!(!now.contains(blocks), "{now:?}");
    assert!(now.contains(sessions), "backed up hot only: kept: {now:?}");
    stop(s).await;
    handles.shutdown(Duration::from_secs(5)).await;
}

/// A gate the test holds: it answers `set`, once `open`.
#[derive(Clone, Default)]
struct Gate {
    set: Arc<Mutex<BTreeSet<String>>>,
    open: Arc<AtomicBool>,
    opened: Arc<tokio::sync::Notify>,
}

impl Gate {
    fn backed_up(&self) -> BackedUpIndices {
        let gate = self.clone();
        Arc::new(move || {
            let gate = gate.clone();
            Box::pin(async move {
                while !gate.open.load(Ordering::SeqCst) {
                    gate.opened.notified().await;
                }
                Ok(gate.set.lock().expect("set").clone())
            })
        })
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.opened.notify_waiters();
    }
}

#[actix_rt::test]
async fn a_lifecycle_tick_applies_the_plan_and_deletes_only_what_its_gate_calls_backed_up() {
    let server = lucid_testkit::elasticsearch();
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = search_config(tmp.path(), &server);
    let cap = events::capture();
    let handles = lucid_actors::start(&c, Roles::CLI);
    handles
        .registry
        .wait_up(
            lucid_actors::Backend::Elasticsearch,
            Duration::from_secs(10),
        )
        .await;
    // Two indices long past the delete phase.
    for index in ["lucid-blocks-2020.01", "lucid-sessions-2020.01"] {
        request(
            &server,
            elasticsearch::http::Method::Put,
            &format!("/{index}"),
        )
        .await;
    }

    // No gate (the daemon's until #12): the plan is applied — this month's indices and write
    // aliases in place, the old ones frozen — and nothing is deleted.
    let s = scheduler(&c, &handles, Arc::new(SystemClock), None);
    let run = tick(&s, JobName::Lifecycle).await;
    assert_ok(&run);
    assert!(run.detail.contains("kept 2"), "{}", run.detail);
    let month = Utc::now().format("%Y.%m").to_string();
    let now = indices(&server).await;
    assert!(now.contains(&format!("lucid-blocks-{month}")), "{now:?}");
    assert!(now.contains("lucid-blocks-2020.01") && now.contains("lucid-sessions-2020.01"));
    assert!(!cap.named("ilm.transition").is_empty());
    stop(s).await;

    // A gate that says lucid-blocks-2020.01 is backed up; held closed at first, so the run
    // stays in flight: the next hour's tick is skipped as an overlap, and recorded.
    let gate = Gate::default();
    gate.set
        .lock()
        .expect("set")
        .insert("lucid-blocks-2020.01".to_owned());
    // An hour on: the first scheduler handled this hour's slot.
    let clock = Arc::new(ManualClock::new(Utc::now() + chrono::Duration::hours(1)));
    let s = scheduler(&c, &handles, clock.clone(), Some(gate.backed_up()));
    // The first scheduler's run is in the records this one read.
    let before = s.history(JobName::Lifecycle).await.expect("history").len();
    assert_eq!(before, 1);
    assert!(s.tick(JobName::Lifecycle));
    // The tick reads the clock when the actor takes it: move the clock only after that.
    while running(&s, JobName::Lifecycle).await.is_none() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    clock.advance(chrono::Duration::hours(1));
    assert!(s.tick(JobName::Lifecycle));
    let h = runs(&s, JobName::Lifecycle, 2).await.split_off(1);
    assert_eq!(
        h[0].outcome,
        RunOutcome::Skipped {
            why: "overlap".into()
        },
        "{h:?}"
    );
    assert!(
        running(&s, JobName::Lifecycle).await.is_some(),
        "still in flight"
    );
    gate.open();
    let h = runs(&s, JobName::Lifecycle, 3).await.split_off(1);
    assert_ok(&h[1]);
    assert_eq!(
        h[1].slot.zip(h[0].slot).map(|(run, skipped)| skipped - run),
        Some(chrono::Duration::hours(1)),
        "the run that was held ran for its own slot, an hour before the skipped one"
    );
    let now = indices(&server).await;
    assert!(!now.contains("lucid-blocks-2020.01"), "{now:?}");
    assert!(
        now.contains("lucid-sessions-2020.01"),
        "not backed up: kept"
    );
    assert_eq!(cap.named("job.skipped").len(), 1);
    handles.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_maintenance_tick_removes_a_stale_temp_file_and_keeps_a_fresh_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = config_in(tmp.path());
    let chunks = c.volumes.root.join("chunks");
    std::fs::create_dir_all(chunks.join("sub")).expect("mkdir");
    let stale = chunks.join("sub/upload.tmp");
    let fresh = chunks.join("sub/writing.tmp");
    let data = chunks.join("sub/block.bin");
    for p in [&stale, &fresh, &data] {
        std::fs::write(p, vec![1u8; 4096]).expect("write");
    }
    let two_days_ago = filetime::FileTime::from_unix_time(Utc::now().timestamp() - 2 * 86_400, 0);
    filetime::set_file_mtime(&stale, two_days_ago).expect("mtime");
    filetime::set_file_mtime(&data, two_days_ago).expect("mtime");
    let handles = lucid_actors::start(&c, Roles::CLI);
    let s = scheduler(&c, &handles, Arc::new(SystemClock), None);

    let run = tick(&s, JobName::VolumeMaintenance).await;
    assert_ok(&run);
    assert!(
        !stale.exists(),
        "a temporary file older than cleanup_age goes"
    );
    assert!(fresh.exists(), "a fresh one stays");
    assert!(data.exists(), "data stays, however old");
    assert!(
        run.detail.contains("removed 1 files (4096 bytes)"),
        "{}",
        run.detail
    );
    // Its usage was measured afresh: listed without another walk.
    let volumes = handles.volumes.clone().expect("volumes");
    let list = volumes
        .call(lucid_actors::volume::ListVolumes)
        .await
        .expect("list");
    let chunks_info = list
        .iter()
        .find(|v| v.meta.name.as_str() == "chunks")
        .expect("chunks");
    let usage = chunks_info.usage.expect("measured");
    assert_eq!(usage.tally.files, 2);
    handles.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_usage_tick_checks_thresholds_and_a_health_tick_reports_every_backend() {
    let redis = lucid_testkit::redis();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut c = config_in(tmp.path());
    c.redis.enabled = true;
    c.redis.url = redis.url().into();
    c.volumes.usage_max_age = Duration::from_millis(1);
    let cap = events::capture();
    let handles = lucid_actors::start(&c, Roles::CLI);
    handles
        .registry
        .wait_up(lucid_actors::Backend::Redis, Duration::from_secs(10))
        .await;
    let volumes = handles.volumes.clone().expect("volumes");
    let small = VolumeName::new("small").expect("name");
    let info = volumes
        .call(CreateVolume {
            name: small.clone(),
            quota: Some(ByteSize::parse("1M").expect("size")),
            kind: None,
            labels: Default::default(),
        })
        .await
        .expect("create");
    std::fs::write(info.data_dir.join("fill"), vec![0u8; 900 * 1024]).expect("write");
    let s = scheduler(&c, &handles, Arc::new(SystemClock), None);

    let run = tick(&s, JobName::VolumeUsage).await;
    assert_ok(&run);
    assert!(run.detail.contains("small"), "{}", run.detail);
    let crossed = cap.named("volume.threshold_crossed");
    assert_eq!(crossed.len(), 1);
    assert_eq!(crossed[0].field("volume"), Some("small"));

    let run = tick(&s, JobName::HealthSummary).await;
    assert_ok(&run);
    let summary = cap.named("health.summary");
    assert_eq!(summary.len(), 1);
    // Redis and the volumes' data root (the volume actor's entry in the registry).
    assert_eq!(summary[0].field("up"), Some("2"));
    assert_eq!(summary[0].field("total"), Some("2"));
    assert!(
        summary[0]
            .field("summary")
            .is_some_and(|t| t.starts_with("redis up") && t.contains("volumes up")),
        "{summary:?}"
    );
    handles.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------------
// The operator's side

/// The CLI on a machine of its own: data root and state directory in a temp dir, every
/// backend off.
struct Machine {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("volumes")).expect("mkdir");
        let mut env: Vec<(String, String)> = [
            ("LUCID_DB__REDIS__ENABLED", "false"),
            ("LUCID_DB__MONGODB__ENABLED", "false"),
            ("LUCID_DB__ELASTICSEARCH__ENABLED", "false"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec();
        for (k, p) in [
            ("LUCID_DB__VOLUMES__ROOT", "volumes"),
            ("LUCID_DB__STATE_DIR", "state"),
        ] {
            env.push((k.to_owned(), dir.path().join(p).display().to_string()));
        }
        Machine { dir, env }
    }

    fn runs_dir(&self) -> PathBuf {
        self.dir.path().join("state/scheduler/runs")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run lucid-db")
    }

    /// Runs `args` with `--json`, expects `code`, answers the JSON printed.
    fn json(&self, args: &[&str], code: i32) -> serde_json::Value {
        let mut all = vec!["schedule"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = self.cli(&all);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

#[test]
fn schedule_run_records_a_run_by_hand_that_ls_and_history_show() {
    let m = Machine::new();
    let ls = m.json(&["ls"], 0);
    let jobs: Vec<(&str, &str)> = ls
        .as_array()
        .expect("list")
        .iter()
        .map(|j| {
            (
                j["job"].as_str().expect("job"),
                j["schedule"].as_str().unwrap_or("off"),
            )
        })
        .collect();
    assert_eq!(
        jobs,
        [
            ("backup", "0 2 * * *"),
            ("verify", "0 4 * * *"),
            ("retention", "30 3 * * *"),
            ("lifecycle", "15 * * * *"),
            ("volume_usage", "*/5 * * * *"),
            ("volume_maintenance", "45 3 * * *"),
            ("health_summary", "* * * * *"),
        ]
    );
    assert!(
        ls[0]["next"]
            .as_str()
            .is_some_and(|t| t.ends_with("T02:00:00Z"))
    );
    assert!(ls[0]["last"].is_null());

    let stale = m.dir.path().join("volumes/chunks/old.tmp");
    std::fs::create_dir_all(stale.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stale, "x").expect("write");
    filetime::set_file_mtime(&stale, filetime::FileTime::from_unix_time(1_600_000_000, 0))
        .expect("mtime");
    let record = m.json(&["run", "volume_maintenance"], 0);
    assert_eq!(record["outcome"], "ok");
    assert_eq!(record["trigger"], "manual");
    assert!(record.get("slot").is_none(), "{record}");
    assert!(!stale.exists());

    let history = m.json(&["history", "volume_maintenance"], 0);
    assert_eq!(history.as_array().map(Vec::len), Some(1));
    assert_eq!(history[0]["run_id"], record["run_id"]);
    let ls = m.json(&["ls"], 0);
    assert_eq!(ls[5]["last"]["run_id"], record["run_id"]);

    // The text forms.
    let out = m.cli(&["schedule", "ls"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("volume_maintenance") && l.contains(" ok ")),
        "{text}"
    );
    let out = m.cli(&["schedule", "history", "volume_maintenance"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("manual") && text.contains("removed 1 files"),
        "{text}"
    );

    // A job that does not exist.
    let out = m.cli(&["schedule", "history", "nightly"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("health_summary"));
    // Lifecycle with Elasticsearch turned off: nothing to do it with.
    let record = m.json(&["run", "lifecycle"], 69);
    assert_eq!(record["outcome"], "skipped");
    assert_eq!(record["why"], "not_running");

    // A damaged record file: reported, and history is empty; nothing is written by reading.
    let file = m.runs_dir().join("volume_maintenance.json");
    std::fs::write(&file, "{ damaged").expect("write");
    let out = m.cli(&["schedule", "history", "volume_maintenance", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read its run records"));
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "{ damaged");
}

/// Beside the daemon `schedule run` goes through its API (tests/it/http/cli_client.rs); without
/// a token it does nothing there, and it never runs the job in process (exit 77, saying how to
/// make a token).
#[test]
fn schedule_run_beside_the_daemon_without_a_token_does_nothing_and_exits_77() {
    let m = Machine::new();
    let config =
        "[redis]\nenabled = false\n[mongodb]\nenabled = false\n[elasticsearch]\nenabled = false\n";
    let env: Vec<(&str, &str)> = m
        .env
        .iter()
        .filter(|(k, _)| !k.ends_with("__STATE_DIR") && !k.ends_with("__ROOT"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut d = Daemon::start(Path::new(BIN), config, &[], &env);
    assert!(
        d.notify
            .wait_for(Duration::from_secs(10), |l| l == "READY=1")
            .is_some(),
        "{}",
        d.stderr()
    );
    // The daemon's state directory and data root.
    let state = d.dir().join("state");
    let lock = state.join("locks/scheduler.lock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !lock.exists() {
        assert!(std::time::Instant::now() < deadline, "no scheduler lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(BIN)
        .args(["schedule", "run", "health_summary"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .env("LUCID_DB__STATE_DIR", &state)
        .env("LUCID_DB__VOLUMES__ROOT", d.dir().join("volumes"))
        .env("LUCID_DB__HTTP__BIND", d.http.to_string())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(
        stderr.contains("--token-file") && stderr.contains("lucid-db token add"),
        "{stderr}"
    );
    // Nothing ran: no manual run in the daemon's records.
    let runs = std::fs::read_to_string(state.join("scheduler/runs/health_summary.json"))
        .unwrap_or_default();
    assert!(!runs.contains("\"manual\""), "the job ran: {runs}");
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn config_check_refuses_bad_schedules_with_78_naming_the_key() {
    let m = Machine::new();
    let cases = [
        (
            "[scheduler]\nbackup = \"0 25 * * *\"\n",
            "scheduler.backup",
            "cron",
        ),
        (
            "[scheduler]\nretention = \"0 30 3 * * *\"\n",
            "scheduler.retention",
            "six fields",
        ),
        (
            "[scheduler]\nnightly = \"0 1 * * *\"\n",
            "scheduler.nightly",
            "unknown field",
        ),
        (
            "[scheduler.jitter]\nvolume_usage = \"5m\"\n",
            "scheduler.jitter.volume_usage",
            "not shorter than the 5m",
        ),
        (
            "[scheduler.jitter]\nweekly = \"1h\"\n",
            "scheduler.jitter.weekly",
            "unknown field",
        ),
        (
            "[scheduler]\nverify = \"@reboot\"\n",
            "scheduler.verify",
            "nickname",
        ),
    ];
    for (file, key, reason) in cases {
        let path = m.dir.path().join("lucid-db.toml");
        std::fs::write(&path, file).expect("write");
        let out = m.cli(&["--config", path.to_str().expect("utf8"), "config", "check"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{file}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
            .unwrap_or_else(|| panic!("{file}: no line for {key}: {stderr}"));
        assert!(line.contains(reason), "{file}: {line}");
    }
    // Nicknames, "off" and a jitter below the interval pass.
    std::fs::write(
        m.dir.path().join("lucid-db.toml"),
        "[scheduler]\nbackup = \"@daily\"\nlifecycle = \"off\"\n[scheduler.jitter]\nbackup = \"30m\"\nlifecycle = \"2h\"\n",
    )
    .expect("write");
    let path = m.dir.path().join("lucid-db.toml");
    let out = m.cli(&["--config", path.to_str().expect("utf8"), "config", "check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
