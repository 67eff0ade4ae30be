//! The data root: the check the daemon and the CLI make before they start ([`check_root`], a
//! real write), and the actor's periodic probe of it, reported like a backend's connection —
//! an entry `volumes` in the health registry, so a root that is missing, not a directory,
//! read-only, full or not writable shows in `/health`, makes `/ready` answer 503 and is named
//! on systemd's STATUS= line — and as the events `volume.root_down` (once per outage) and
//! `volume.root_up`.
//!
//! The probe runs every `supervisor.probe_interval` on the actor's blocking pool and writes
//! nothing: a stat, statvfs (read-only, fewer than `volumes.min_free` bytes or no inode left)
//! and access(2) for write permission. A file written and fsynced every few seconds would wear
//! a Pi's SD card for no gain: what makes a mounted root refuse writes is a read-only
//! remount, a full disk or its permissions, which these see; the health of each volume
//! (`inspect`, [`super::CheckHealth`]) still makes a real write. A root the volumes could not be
//! loaded from at start is loaded again once a probe finds it usable.

use std::fmt;
use std::path::Path;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use rustix::fs::{Access, AtFlags};
use tokio::time::Instant;

use super::fsops::{self, FsProblem};
use super::{VolumeActor, VolumeError, blocking, store};
use crate::backend::StateLabel;
use crate::events::{self, VolumeRootDown, VolumeRootUp};
use crate::health::{ConnSnapshot, HealthEntry};

/// Checks that the data root exists and is a writable directory (a probe file); the daemon
/// refuses to start otherwise (exit 78).
pub fn check_root(root: &Path) -> Result<(), VolumeError> {
    let err = |reason: String| VolumeError::Root {
        path: root.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(root).map_err(|e| err(e.to_string()))?;
    if !meta.is_dir() {
        return Err(err("not a directory".to_owned()));
    }
    let probe = root.join(format!(
        "{}probe-{:016x}",
        fsops::TRANSIENT_PREFIX,
        rand::random::<u64>()
    ));
    fsops::write_atomic(&probe, b"probe", 0o600).map_err(|e| err(format!("not writable ({e})")))?;
    std::fs::remove_file(&probe).map_err(|e| err(format!("cannot remove a probe file: {e}")))
}

/// Why the data root cannot hold the volumes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RootProblem {
    Missing,
    NotDirectory,
    /// Its filesystem: read-only, full, or out of inodes.
    Fs(FsProblem),
    /// The daemon's user may not create files in it.
    NotWritable(String),
    /// The volumes could not be loaded from it (at start, or again since).
    Unloadable(String),
    Io(String),
}

impl RootProblem {
    /// The code `/health` shows as `last_error.code` and `volume.root_down` carries.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            RootProblem::Missing => "root_missing",
            RootProblem::NotDirectory => "root_not_directory",
            RootProblem::Fs(FsProblem::ReadOnly) => "root_read_only",
            RootProblem::Fs(FsProblem::Full { .. } | FsProblem::NoInodes) => "root_full",
            RootProblem::NotWritable(_) => "root_not_writable",
            RootProblem::Unloadable(_) => "root_unavailable",
            RootProblem::Io(_) => "io",
        }
    }
}

impl fmt::Display for RootProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootProblem::Missing => f.write_str("does not exist"),
            RootProblem::NotDirectory => f.write_str("is not a directory"),
            RootProblem::Fs(problem) => problem.fmt(f),
            RootProblem::NotWritable(e) => write!(f, "not writable: {e}"),
            RootProblem::Unloadable(e) => write!(f, "the volumes cannot be loaded: {e}"),
            RootProblem::Io(e) => e.fmt(f),
        }
    }
}

/// Probes the data root without writing to it (see the module doc). Blocking.
pub(crate) fn probe(root: &Path, min_free: u64) -> Result<(), RootProblem> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(RootProblem::NotDirectory),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RootProblem::Missing),
        Err(e) => return Err(RootProblem::Io(e.to_string())),
    }
    let fs = fsops::statvfs(root).map_err(|e| RootProblem::Io(e.to_string()))?;
    // Read-only first: a read-only filesystem also fails the permission check below.
    if let Some(problem) = fs.problems(min_free).first() {
        return Err(RootProblem::Fs(*problem));
    }
    // The effective ids, as a write by this process would use.
    rustix::fs::accessat(
        rustix::fs::CWD,
        root,
        Access::WRITE_OK | Access::EXEC_OK,
        AtFlags::EACCESS,
    )
    .map_err(|e| RootProblem::NotWritable(std::io::Error::from(e).to_string()))
}

/// The data root's entry in the health registry and what the probes found.
#[derive(Default)]
pub(super) struct RootWatch {
    /// `None` when the actor was started without a registry ([`VolumeActor::start_with`]).
    entry: Option<HealthEntry>,
    /// What was last reported: `None` before the first probe.
    reported: Option<Result<(), RootProblem>>,
    /// When the current outage began.
    down_since: Option<Instant>,
    /// Outages after the root had been usable.
    restarts: u64,
    /// A probe is on the blocking pool: a hung filesystem gets one at a time, not a pile.
    probing: bool,
}

impl RootWatch {
    pub(super) fn new(entry: Option<HealthEntry>) -> Self {
        RootWatch {
            entry,
            ..RootWatch::default()
        }
    }
}

impl VolumeActor {
    /// Loads the volumes (no message is handled meanwhile: `ctx.wait`), then probes the root.
    pub(super) fn load(&mut self, ctx: &mut Context<Self>) {
        let s = self.settings();
        let work = blocking(move || {
            let history = super::forecast::load(s.history_file.as_deref());
            Ok((history, store::load(&s)))
        });
        ctx.wait(work.into_actor(self).map(|res, act, ctx| {
            let res = match res {
                Ok((history, loaded)) => {
                    // Samples taken meanwhile (none: this runs before any message) come first.
                    if act.history.volumes.is_empty() {
                        act.history = history;
                    }
                    loaded
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(volumes) => {
                    act.volumes = volumes;
                    act.root_error = None;
                }
                // The daemon checks the root before it starts (exit 78); an embedding sibling
                // gets `Root` errors from every call until a probe finds the root usable.
                Err(e) => {
                    tracing::warn!(root = %act.settings.root.display(), error = %e, "volume root unusable");
                    act.root_error = Some(match e {
                        VolumeError::Root { reason, .. } => reason,
                        other => other.to_string(),
                    });
                }
            }
            act.probe_root(ctx, true);
        }));
    }

    /// Probes the root now and every `supervisor.probe_interval`.
    pub(super) fn watch_root(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.settings.probe_interval, |act, ctx| {
            act.probe_root(ctx, false)
        });
    }

    /// One probe on the blocking pool; `after_load`: the volumes were just (re)loaded, so a
    /// load that failed is reported rather than tried again at once.
    fn probe_root(&mut self, ctx: &mut Context<Self>, after_load: bool) {
        if self.root.probing {
            return;
        }
        self.root.probing = true;
        let s = self.settings();
        let work = blocking(move || Ok(probe(&s.root, s.min_free)));
        ctx.spawn(work.into_actor(self).map(move |res, act, ctx| {
            act.root.probing = false;
            let found = res.unwrap_or_else(|e| Err(RootProblem::Io(e.to_string())));
            match (found, &act.root_error) {
                (Ok(()), Some(_)) if !after_load => act.load(ctx),
                (Ok(()), Some(reason)) => {
                    let problem = RootProblem::Unloadable(reason.clone());
                    act.report_root(Err(problem));
                }
                (found, _) => act.report_root(found),
            }
        }));
    }

    /// Mirrors a probe's finding into the registry and the events, on changes only (so
    /// `/health`'s subscribers and STATUS= wake on a change, not on every probe).
    fn report_root(&mut self, found: Result<(), RootProblem>) {
        let w = &mut self.root;
        if w.reported.as_ref() == Some(&found) {
            return;
        }
        let was_up = matches!(w.reported, Some(Ok(())));
        let state = match &found {
            Ok(()) => {
                if let Some(since) = w.down_since.take() {
                    events::emit(VolumeRootUp {
                        down_ms: since.elapsed().as_millis() as u64,
                    });
                }
                StateLabel::Up
            }
            Err(problem) => {
                let message = format!("{}: {problem}", self.settings.root.display());
                if w.down_since.is_none() {
                    w.down_since = Some(Instant::now());
                    if was_up {
                        w.restarts += 1;
                    }
                    events::emit(VolumeRootDown {
                        code: problem.code(),
                        error: message.clone(),
                    });
                }
                if let Some(entry) = &w.entry {
                    entry.error(problem.code(), &message);
                }
                StateLabel::Down
            }
        };
        if let Some(entry) = &w.entry {
            entry.record(ConnSnapshot {
                state,
                attempt: 0,
                restarts: w.restarts,
                retry_at: None,
                reason: None,
            });
        }
        w.reported = Some(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe on real paths: a usable directory, one that is not there, a file in its
    /// place, a threshold above what its filesystem has free. (Root, as CI runs, passes every
    /// permission check, and a test cannot remount a filesystem read-only: the read-only case
    /// is the statvfs flag, [`FsStats::problems`]'s table below.)
    #[test]
    fn the_probe_tells_missing_not_a_directory_full_and_usable_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("volumes");
        assert_eq!(probe(&root, 0), Err(RootProblem::Missing));
        std::fs::write(&root, b"not a directory").expect("write");
        assert_eq!(probe(&root, 0), Err(RootProblem::NotDirectory));
        std::fs::remove_file(&root).expect("rm");
        std::fs::create_dir(&root).expect("mkdir");
        assert_eq!(probe(&root, 1), Ok(()));
        let free = fsops::statvfs(&root).expect("statvfs").free_bytes;
        match probe(&root, u64::MAX) {
            Err(RootProblem::Fs(FsProblem::Full {
                free_bytes,
                min_free,
            })) => {
                assert_eq!(min_free, u64::MAX);
                // Other tests write on this filesystem meanwhile: about the same, not equal.
                assert!(
                    free_bytes.abs_diff(free) < 1 << 30,
                    "{free_bytes} vs {free}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Writes nothing: the probe leaves the root as it found it.
        assert_eq!(std::fs::read_dir(&root).expect("ls").count(), 0);
    }

    #[test]
    fn a_filesystem_is_read_only_full_or_out_of_inodes_and_each_has_its_code() {
        use super::fsops::FsStats;
        let fs = |free_bytes, free_inodes, read_only| FsStats {
            total_bytes: 1 << 30,
            free_bytes,
            total_inodes: 1000,
            free_inodes,
            read_only,
        };
        let full = |free_bytes, min_free| FsProblem::Full {
            free_bytes,
            min_free,
        };
        let table = [
            (fs(1 << 20, 10, false), 1 << 20, vec![]),
            (
                fs(1 << 20, 10, false),
                (1 << 20) + 1,
                vec![full(1 << 20, (1 << 20) + 1)],
            ),
            // Nothing free is full whatever the threshold, 0 too.
            (fs(0, 10, false), 0, vec![full(0, 0)]),
            (fs(1 << 20, 0, false), 0, vec![FsProblem::NoInodes]),
            (fs(1 << 20, 10, true), 0, vec![FsProblem::ReadOnly]),
            (
                fs(0, 0, true),
                1,
                vec![FsProblem::ReadOnly, full(0, 1), FsProblem::NoInodes],
            ),
        ];
        for (stats, min_free, problems) in table {
            assert_eq!(stats.problems(min_free), problems, "{stats:?} {min_free}");
        }
        // No fixed inode count (btrfs reports 0 of 0): not out of inodes.
        let btrfs = FsStats {
            total_inodes: 0,
            ..fs(1 << 20, 0, false)
        };
        assert!(btrfs.problems(0).is_empty());
        let codes: Vec<&str> = [
            RootProblem::Missing,
            RootProblem::NotDirectory,
            RootProblem::Fs(FsProblem::ReadOnly),
            RootProblem::Fs(full(0, 1)),
            RootProblem::Fs(FsProblem::NoInodes),
            RootProblem::NotWritable("denied".into()),
            RootProblem::Unloadable("gone".into()),
            RootProblem::Io("eio".into()),
        ]
        .iter()
        .map(RootProblem::code)
        .collect();
        assert_eq!(
            codes,
            [
                "root_missing",
                "root_not_directory",
                "root_read_only",
                "root_full",
                "root_full",
                "root_not_writable",
                "root_unavailable",
                "io"
            ]
        );
    }
}
