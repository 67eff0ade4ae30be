//! Run records: what every run of a job did — scheduled, caught up or started by hand, and
//! every run that was skipped — one file per job, `state_dir/scheduler/runs/{job}.json`, with
//! the job's last [`KEEP`] runs, oldest first.
//!
//! Each file is rewritten whole for every run, through a temporary file, fsync and a rename
//! (and an fsync of the directory), so a crash leaves the old list or the new one, never half
//! of either. A file that cannot be read as a list of runs (damaged, written by a newer
//! format, another job's) is set aside as `{job}.json.corrupt-{time}` for an operator to look
//! at, and the job starts with no history: a bad file must never keep the daemon from starting
//! (a crash loop would stop every other job too). With no history a job has missed nothing,
//! so it is not caught up.
//!
//! Only the process that holds the scheduler lock writes here (the daemon, or `schedule run`
//! while no daemon runs); `schedule ls` and `schedule history` only read.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::job::JobName;
use crate::backup::manifest::rfc3339;

/// How many runs a job's file keeps.
pub const KEEP: usize = 100;

/// The file format this version writes and reads.
pub const FORMAT: u32 = 1;

/// How a run came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunTrigger {
    /// Its cron slot came.
    Schedule,
    /// Its slot passed while the daemon was not running; run once at start.
    CatchUp,
    /// `lucid-db schedule run JOB` (or, later, the HTTP API).
    Manual,
}

impl RunTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Schedule => "schedule",
            RunTrigger::CatchUp => "catch_up",
            RunTrigger::Manual => "manual",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RunOutcome {
    Ok,
    /// `code` is the failing actor's error code (`busy`, `unavailable`, `clock_behind`, …).
    Failed {
        code: String,
        error: String,
    },
    /// Not run: `overlap` (the job's previous run had not ended), `waiting_for_clock` (its
    /// previous run still waits for a trusted clock), `clock_went_back` (the slot is older than
    /// one already run), `not_running` (what the job needs does not run in this process).
    Skipped {
        why: String,
    },
}

impl RunOutcome {
    /// `ok`, `failed` or `skipped`.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed { .. } => "failed",
            RunOutcome::Skipped { .. } => "skipped",
        }
    }
}

/// One run of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// `20261130T020000Z-3f9a`: the start, then a random suffix.
    pub run_id: String,
    pub job: JobName,
    pub trigger: RunTrigger,
    /// The cron slot it ran for; none for a run started by hand.
    #[serde(
        default,
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub slot: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339")]
    pub started: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub ended: DateTime<Utc>,
    #[serde(flatten)]
    pub outcome: RunOutcome,
    /// Earlier slots that passed without a run of their own (the daemon was down, the clock
    /// jumped forward): this run stood in for them too. Counted up to 10,000.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub missed: u64,
    /// What the run did, in a line: the backup id, what a prune deleted, …
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RunRecord {
    /// How long it ran, in milliseconds (0 when the clock went back meanwhile).
    pub fn duration_ms(&self) -> u64 {
        (self.ended - self.started)
            .num_milliseconds()
            .try_into()
            .unwrap_or(0)
    }
}

/// A new run id for a run starting at `at`.
pub fn run_id(at: DateTime<Utc>) -> String {
    format!(
        "{}-{:04x}",
        at.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u16>()
    )
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsFile {
    format: u32,
    job: JobName,
    runs: Vec<RunRecord>,
}

/// The file holding `job`'s runs under `dir` (`state_dir/scheduler/runs`).
pub fn path(dir: &Path, job: JobName) -> PathBuf {
    dir.join(format!("{job}.json"))
}

/// Why a job's file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// It is there but is not a list of this job's runs.
    #[error("{path}: not a run record file of job {job}: {reason}")]
    Corrupt {
        path: String,
        job: JobName,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

impl RecordsError {
    pub fn code(&self) -> &'static str {
        match self {
            RecordsError::Corrupt { .. } => "records_corrupt",
            RecordsError::Io { .. } => "records_unusable",
        }
    }
}

/// `job`'s runs, oldest first; none when it has no file yet. Reads only.
pub fn read(dir: &Path, job: JobName) -> Result<Vec<RunRecord>, RecordsError> {
    let path = path(dir, job);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RecordsError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            });
        }
    };
    let corrupt = |reason: String| RecordsError::Corrupt {
        path: path.display().to_string(),
        job,
        reason,
    };
    let file: RunsFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    if file.format != FORMAT {
        return Err(corrupt(format!(
            "format {} (this version reads {FORMAT})",
            file.format
        )));
    }
    if file.job != job || file.runs.iter().any(|r| r.job != job) {
        return Err(corrupt(format!("it holds runs of job {}", file.job)));
    }
    Ok(file.runs)
}

/// A file set aside because it could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub job: JobName,
    /// Where it is now (`None`: it could not be moved; the next write replaces it).
    pub moved_to: Option<PathBuf>,
    pub error: RecordsError,
}

/// `job`'s runs for the process that writes them: a corrupt file is set aside (renamed to
/// `{job}.json.corrupt-{now}`) and the job starts with none. Blocking file I/O.
pub fn load(
    dir: &Path,
    job: JobName,
    now: DateTime<Utc>,
) -> Result<(VecDeque<RunRecord>, Option<SetAside>), RecordsError> {
    match read(dir, job) {
        Ok(runs) => Ok((runs.into(), None)),
        Err(error @ RecordsError::Corrupt { .. }) => {
            let from = path(dir, job);
            let to = dir.join(format!(
                "{job}.json.corrupt-{}",
                now.format("%Y%m%dT%H%M%S%.3fZ")
            ));
            let moved_to = std::fs::rename(&from, &to).ok().map(|()| to);
            Ok((
                VecDeque::new(),
                Some(SetAside {
                    job,
                    moved_to,
                    error,
                }),
            ))
        }
        Err(e) => Err(e),
    }
}

/// Writes `runs` (the newest [`KEEP`] of them) as `job`'s file, atomically and durably.
/// Blocking file I/O.
pub fn write(dir: &Path, job: JobName, runs: &[RunRecord]) -> Result<(), RecordsError> {
    let target = path(dir, job);
    let io = |e: std::io::Error| RecordsError::Io {
        path: target.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(crate::state::MODE)
        .create(dir)
        .map_err(io)?;
    let keep = &runs[runs.len().saturating_sub(KEEP)..];
    let file = RunsFile {
        format: FORMAT,
        job,
        runs: keep.to_vec(),
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| io(std::io::Error::other(e)))?;
    let tmp = dir.join(format!(".{job}.json.tmp-{:08x}", rand::random::<u32>()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::at;

    fn record(i: i64, outcome: RunOutcome) -> RunRecord {
        let started = at("2026-11-01T02:00:00Z") + chrono::Duration::days(i);
        RunRecord {
            run_id: run_id(started),
            job: JobName::Backup,
            trigger: RunTrigger::Schedule,
            slot: Some(started),
            started,
            ended: started + chrono::Duration::seconds(90),
            outcome,
            missed: 0,
            detail: String::new(),
        }
    }

    #[test]
    fn a_file_keeps_the_newest_runs_and_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runs_dir = dir.path().join("scheduler/runs");
        assert_eq!(read(&runs_dir, JobName::Backup), Ok(vec![]), "no file yet");
        let runs: Vec<RunRecord> = (0..130)
            .map(|i| match i % 3 {
                0 => record(i, RunOutcome::Ok),
                1 => record(
                    i,
                    RunOutcome::Failed {
                        code: "busy".into(),
                        error: "another backup runs".into(),
                    },
                ),
                _ => record(
                    i,
                    RunOutcome::Skipped {
                        why: "overlap".into(),
                    },
                ),
            })
            .collect();
        write(&runs_dir, JobName::Backup, &runs).expect("write");
        let back = read(&runs_dir, JobName::Backup).expect("read");
        assert_eq!(back.len(), KEEP);
        assert_eq!(back, runs[30..], "the newest 100, oldest first");
        assert_eq!(back[0].duration_ms(), 90_000);
        // No temporary file is left behind.
        let names: Vec<String> = std::fs::read_dir(&runs_dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["backup.json"]);
        let text = std::fs::read_to_string(path(&runs_dir, JobName::Backup)).expect("read");
        assert!(
            text.contains(r#""outcome":"failed","code":"busy""#),
            "{text}"
        );
    }

    #[test]
    fn a_corrupt_file_is_set_aside_and_the_job_starts_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = at("2026-12-01T00:00:00Z");
        let other = [record(0, RunOutcome::Ok)];
        for (job, body) in [
            (
                JobName::Backup,
                b"{\"format\":1,\"job\":\"backup\",\"runs\":[{".to_vec(),
            ),
            (JobName::Verify, b"\x00\x01garbage".to_vec()),
            (
                JobName::Retention,
                serde_json::to_vec(&RunsFile {
                    format: 1,
                    job: JobName::Backup,
                    runs: other.to_vec(),
                })
                .expect("json"),
            ),
            (
                JobName::Lifecycle,
                b"{\"format\":2,\"job\":\"lifecycle\",\"runs\":[]}".to_vec(),
            ),
        ] {
            std::fs::write(path(dir.path(), job), &body).expect("write");
            assert!(
                matches!(read(dir.path(), job), Err(RecordsError::Corrupt { .. })),
                "{job}"
            );
            let (runs, set_aside) = load(dir.path(), job, now).expect("load");
            assert!(runs.is_empty(), "{job}");
            let set_aside = set_aside.expect("set aside");
            assert_eq!(set_aside.error.code(), "records_corrupt");
            let moved = set_aside.moved_to.expect("moved");
            assert_eq!(std::fs::read(&moved).expect("kept"), body, "{job}");
            assert!(moved.to_string_lossy().contains(".corrupt-20261201T000000"));
            assert!(!path(dir.path(), job).exists());
            // The next write starts a good file.
            write(dir.path(), job, &[]).expect("write");
            assert_eq!(load(dir.path(), job, now).expect("load").1, None);
        }
    }
}
