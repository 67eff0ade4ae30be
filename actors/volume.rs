//! The volume actor: the named volumes under `volumes.root` — their quotas, usage and
//! thresholds, health, integrity manifests, and their data as tar streams for backups — and
//! the data root's entry in the health registry.
//!
//! A volume is a directory `root/{name}` (or, after a migration, the path its metadata names)
//! with its metadata beside it in `root/{name}.volume.json`, its integrity manifest in
//! `root/{name}.manifest.json` and a lock file `root/.{name}.lock` (empty; it outlives a delete:
//! unlinking a lock file another process waits on would let two processes hold "the" lock on
//! two different files, should the name be created again). Quotas are advisory on a
//! plain filesystem (nothing stops a database server from writing past one): they are
//! measured, warned about, and enforced on the daemon's own writes (`WriteFile`, `Import`).
//!
//! The files on disk are the truth: every operation re-reads the volume's metadata under the
//! volume's lock file (exclusive to replace or move data, shared to read it or add to it), so
//! the CLI and the daemon never act on each other's stale view. A volume's directory must be
//! a real directory, never a symlink, and a migration target never lies inside the data root
//! or another volume.
//!
//! Every filesystem operation runs on a blocking thread, never on the actor's event loop, so a
//! walk over 100,000 files does not hold up other messages: each handler checks the request
//! on the actor, runs the disk work on the blocking pool and takes the result in on the actor
//! again (`VolumeActor::on_disk`). Usage is cached for `volumes.usage_max_age` and adjusted
//! by the actor's own writes, so a large volume is not re-walked on every probe. The data root
//! is probed every `supervisor.probe_interval` and reported in the health registry as
//! `volumes` (missing, read-only or full: `/ready` answers 503).
//!
//! This file holds the messages, the handle, the actor's state and its thin handlers; the
//! rest is in `actors/volume/`: `types` (names, errors, what is stored and reported),
//! `store` (the on-disk store: paths, metadata, loading at start, the short operations'
//! disk work), `usage` (the usage cache and thresholds), `root` (the data root's check and
//! probe), one file per long operation — `import`, `migrate`, `cleanup` —, [`reserve`]
//! (quota for the daemon's own writes and streaming writers), [`integrity`] (manifests,
//! verify), [`io`] (I/O figures and the latency probe), [`forecast`] (time to full),
//! [`snapshot`] (snapshots, their restore and retention), [`archive`] (tar streams)
//! and [`fsops`] (paths that cannot escape, atomic writes,
//! statvfs, walks, the lock).

pub mod archive;
mod cleanup;
pub mod forecast;
pub mod fsops;
mod import;
pub mod integrity;
pub mod io;
pub mod maintain;
mod migrate;
pub mod reserve;
mod root;
pub mod snapshot;
mod store;
mod types;
mod usage;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::prelude::*;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::config::{ByteSize, SupervisorConfig, VolumesConfig};
use crate::events::{self, VolumeCreated, VolumeDeleted, VolumeMigrated};
use crate::health::HealthEntry;
use crate::supervisor::DeadlineError;
use crate::supervisor::feed::{Feed, feed};
use crate::threads::ActorThread;
use crate::transfer::{self, Source};
pub use forecast::Forecast;
pub use fsops::CopyMethod;
pub use integrity::VerifyReport;
pub use io::{Device, IoStats, VolumeStats};
pub use maintain::{Maintain, MaintenanceFailure, MaintenanceReport};
pub use reserve::{Reservation, ReserveQuota, ReservedWriter};
pub use root::check_root;
pub use snapshot::{
    DeleteSnapshot, ListSnapshots, RestoreSnapshot, SnapshotInfo, TakeSnapshot, VerifySnapshot,
};
pub use types::{
    CleanupReport, DEFAULT_VOLUMES, HARD_MAX_QUOTA, ImportDetails, ImportOptions, ImportSummary,
    Usage, VolumeError, VolumeHealth, VolumeInfo, VolumeMeta, VolumeName, check_config,
};
pub use usage::{ThresholdChange, threshold_step};

// ---------------------------------------------------------------------------------------------
// Messages

/// Every volume, with its usage if measured within `volumes.usage_max_age` (no walking).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<VolumeInfo>, VolumeError>")]
pub struct ListVolumes;

/// One volume with fresh-enough usage and its health.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct InspectVolume {
    pub name: VolumeName,
}

/// Creates a volume (quota `None`: `volumes.default_quota`).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct CreateVolume {
    pub name: VolumeName,
    pub quota: Option<ByteSize>,
    pub kind: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Deletes a volume and its data; refused for a non-empty volume unless `force`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), VolumeError>")]
pub struct DeleteVolume {
    pub name: VolumeName,
    pub force: bool,
}

/// Sets a volume's quota: at most `volumes.max_quota`, never below its current use.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct ResizeVolume {
    pub name: VolumeName,
    pub quota: ByteSize,
}

/// Walks the volume now and answers its usage (also checking its threshold).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Usage, VolumeError>")]
pub struct MeasureUsage {
    pub name: VolumeName,
}

/// Measures every volume whose usage is stale and checks its threshold; the scheduler's
/// usage tick. Answers the volumes above their warning threshold.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<VolumeName>, VolumeError>")]
pub struct CheckThresholds;

/// Probes a volume's health (a real write, fsync and delete).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeHealth, VolumeError>")]
pub struct CheckHealth {
    pub name: VolumeName,
}

/// Compares a volume with its integrity manifest (built if there is none); `update` re-seals.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VerifyReport, VolumeError>")]
pub struct Verify {
    pub name: VolumeName,
    pub update: bool,
}

/// Streams a volume as tar, in chunks: a feed that ends after the last chunk or with one `Err`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Feed<Vec<u8>, VolumeError>, VolumeError>")]
pub struct ExportVolume {
    pub name: VolumeName,
}

/// Restores a tar stream into a volume (created if missing), under the one import contract
/// of every store ([`crate::transfer`]). A volume that holds files is refused unless the
/// import replaces it; an empty one counts as empty (every default volume starts so) unless
/// the options refuse any existing target. The content is replaced only once the whole stream
/// is unpacked, flushed to disk and found to end properly; the old manifest goes (the content
/// changed: verify seals a new one). An `Err` item from the source fails the import
/// ([`VolumeError::ImportSource`]) and leaves the volume as it was.
#[derive(Message)]
#[rtype(result = "Result<ImportSummary, VolumeError>")]
pub struct ImportVolume {
    pub options: ImportOptions,
    /// Chunks of tar, as [`ExportVolume`] produces them.
    pub source: Source<Vec<u8>>,
}

impl fmt::Debug for ImportVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportVolume")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Moves a volume's data to `to` (absolute, not existing yet, outside the data root and every
/// volume): copy, verify, flush, then switch the metadata. An interruption before the switch
/// leaves the original as it was (and the partial copy is removed). Stop the servers using the
/// volume first: what they write during the copy would stay behind.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<VolumeInfo, VolumeError>")]
pub struct MigrateVolume {
    pub name: VolumeName,
    pub to: PathBuf,
}

/// Removes files matching `volumes.cleanup_patterns` older than `volumes.cleanup_age`, and
/// leftovers of interrupted imports and migrations.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<CleanupReport, VolumeError>")]
pub struct CleanupVolume {
    pub name: VolumeName,
}

/// Writes a file inside a volume (atomically), refused when the volume is over its quota or
/// the path would leave the volume. The daemon's own writes go through here.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), VolumeError>")]
pub struct WriteFile {
    pub name: VolumeName,
    /// Relative to the volume, `/`-separated.
    pub path: String,
    pub data: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Handle

/// A volume message, and how long its caller waits for the answer.
pub trait VolumeOp: Message<Result = Result<Self::Output, VolumeError>> + Send + 'static {
    type Output: Send + 'static;

    /// A long operation moves, hashes or removes a volume's data, or changes it after a walk
    /// (import, migrate, verify, cleanup, delete, resize, a write, a walk of every volume): its
    /// caller waits as long as it makes progress, which each bounds with
    /// `supervisor.stream_idle_timeout` where it streams. Every other call is short and answers
    /// within `supervisor.call_deadline` — an export too, whose call answers the stream at
    /// once.
    ///
    /// Resize is long because it commits a change after a walk whose length grows with the
    /// number of files: cut off by the call deadline, its caller would hear
    /// `deadline_exceeded` while the new quota is still written, and could not tell whether
    /// the quota changed. A read that runs out of time (inspect, list) changes nothing, so a
    /// deadline costs it nothing but the answer.
    const LONG: bool;
}

macro_rules! volume_ops {
    ($($msg:ty => $out:ty, $long:expr;)*) => {$(
        impl VolumeOp for $msg {
            type Output = $out;
            const LONG: bool = $long;
        }
    )*};
}

volume_ops! {
    ListVolumes => Vec<VolumeInfo>, false;
    InspectVolume => VolumeInfo, false;
    CreateVolume => VolumeInfo, false;
    CheckHealth => VolumeHealth, false;
    ExportVolume => Feed<Vec<u8>, VolumeError>, false;
    ResizeVolume => VolumeInfo, true;
    DeleteVolume => (), true;
    MeasureUsage => Usage, true;
    CheckThresholds => Vec<VolumeName>, true;
    Verify => VerifyReport, true;
    ImportVolume => ImportSummary, true;
    MigrateVolume => VolumeInfo, true;
    CleanupVolume => CleanupReport, true;
    WriteFile => (), true;
    ReserveQuota => Reservation, true;
}

/// What callers hold.
#[derive(Clone)]
pub struct VolumeHandle {
    addr: Addr<VolumeActor>,
    /// `supervisor.call_deadline`, for short calls.
    deadline: Duration,
}

impl VolumeHandle {
    pub fn addr(&self) -> &Addr<VolumeActor> {
        &self.addr
    }

    /// Sends a message and waits for its answer: a short call at most
    /// `supervisor.call_deadline` (then `deadline_exceeded`, so a wedged actor never hangs
    /// its caller), a long operation as long as it makes progress ([`VolumeOp::LONG`]).
    ///
    /// Every call is counted in the backend metrics as the other stores' are
    /// ([`crate::metrics::backend_call`]: `backend="volumes"`, the message's name, its error
    /// code), timed unless the actor never took it.
    pub async fn call<M>(&self, msg: M) -> Result<M::Output, VolumeError>
    where
        M: VolumeOp,
        VolumeActor: Handler<M>,
    {
        let started = std::time::Instant::now();
        let send = async {
            self.addr
                .send(msg)
                .await
                .unwrap_or(Err(VolumeError::NotDelivered {
                    reason: "the volume actor has stopped",
                }))
        };
        let res = if M::LONG {
            send.await
        } else {
            // The one deadline helper every actor's short calls use.
            VolumeError::within(self.deadline, send).await
        };
        let code = res.as_ref().err().map(VolumeError::code);
        let elapsed = match &res {
            Err(VolumeError::NotDelivered { .. }) => None,
            _ => Some(started.elapsed()),
        };
        crate::metrics::backend_call(
            crate::Backend::Volumes,
            crate::metrics::op_name::<M>(),
            elapsed,
            code,
        );
        res
    }

    /// Streams a volume as tar ([`ExportVolume`]).
    pub async fn export(
        &self,
        name: VolumeName,
    ) -> Result<Feed<Vec<u8>, VolumeError>, VolumeError> {
        self.call(ExportVolume { name }).await
    }

    /// Restores a tar stream into a volume ([`ImportVolume`]). `source` may be any stream of
    /// chunks — another volume's export too; one that yields nothing for
    /// `supervisor.stream_idle_timeout` fails the import, one that yields an `Err` fails it
    /// with the count unpacked.
    pub async fn import<S, E>(
        &self,
        options: ImportOptions,
        source: S,
    ) -> Result<ImportSummary, VolumeError>
    where
        S: Stream<Item = Result<Vec<u8>, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.call(ImportVolume {
            options,
            source: transfer::source(source),
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// Settings fixed at start.
#[derive(Debug, Clone)]
struct Settings {
    root: PathBuf,
    defaults: Vec<VolumeName>,
    default_quota: u64,
    max_quota: u64,
    warn: u8,
    clear: u8,
    usage_max_age: Duration,
    cleanup_patterns: Vec<String>,
    cleanup_age: Duration,
    /// Below this many free bytes a filesystem counts as full (`volumes.min_free`).
    min_free: u64,
    stream_idle: Duration,
    probe_interval: Duration,
    /// Snapshots kept per volume (`volumes.snapshots.keep`; 0: all).
    snapshot_keep: u32,
    /// Volumes maintenance verifies (`volumes.verify_on_maintenance`).
    verify_on_maintenance: Vec<VolumeName>,
    /// `volume.filling` below this forecast (`volumes.fill_warning`).
    fill_warning: Duration,
    /// Where the usage samples are kept (under the state directory; none: in memory only).
    history_file: Option<PathBuf>,
    /// `volume.slow_io` at this probe p99 (`volumes.slow_io_threshold`).
    slow_io_threshold: Duration,
}

/// See the module doc.
pub struct VolumeActor {
    settings: Arc<Settings>,
    /// Why the volumes could not be loaded from the data root, if they could not.
    root_error: Option<String>,
    volumes: BTreeMap<VolumeName, VolumeMeta>,
    usage: HashMap<VolumeName, usage::Measured>,
    /// Bytes promised to writers in flight ([`WriteFile`], [`reserve::Reservation`]), shared
    /// so a reservation gives back what it did not use the moment it is dropped, and so
    /// concurrent writes cannot all pass one quota.
    reserved: reserve::Book,
    /// Names being created, so two creates of one name cannot both succeed.
    creating: BTreeSet<VolumeName>,
    /// Volumes above their warning threshold.
    above: BTreeSet<VolumeName>,
    /// The data root's registry entry and what its probes found.
    root: root::RootWatch,
    /// Usage samples, for the time-to-full forecasts.
    history: forecast::History,
    /// Samples added since the history was last saved.
    history_dirty: bool,
    /// Saves run on the blocking pool and may finish out of order: each carries a number, and
    /// the newest written so far is kept here, so an older copy never overwrites a newer one.
    history_saves: (u64, Arc<std::sync::Mutex<u64>>),
    /// Volumes whose `volume.filling` has fired (until their forecast is re-armed).
    filling: BTreeSet<VolumeName>,
    clock: Arc<dyn crate::clock::Clock>,
    /// The latency probes and the slow-I/O state.
    probes: io::Probes,
    mailbox_capacity: usize,
}

impl VolumeActor {
    /// Starts the actor on a thread of its own (`lucid-volume`, tied to the current arbiter:
    /// see `actors/threads.rs`; its filesystem work runs on that thread's blocking pool). It
    /// loads the volumes found under the root, finishes or undoes operations a crash
    /// interrupted, and creates missing default and extra volumes before it takes any message.
    /// Its probes of the data root go to no health registry: [`VolumeActor::start_reporting`]
    /// gives it its entry, as [`crate::start`] does.
    pub fn start_with(cfg: &VolumesConfig, sup: &SupervisorConfig) -> VolumeHandle {
        Self::start(cfg, sup, None, None, Arc::new(crate::clock::SystemClock))
    }

    /// As [`VolumeActor::start_with`], keeping the usage samples in `history_file` and reading
    /// "now" from `clock` (the forecasts' tests move it).
    pub fn start_with_history(
        cfg: &VolumesConfig,
        sup: &SupervisorConfig,
        history_file: Option<PathBuf>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> VolumeHandle {
        Self::start(cfg, sup, None, history_file, clock)
    }

    /// As [`VolumeActor::start_with`], reporting the data root into `entry` (registered as
    /// [`crate::Backend::Volumes`]), its usage samples kept in `history_file`.
    pub fn start_reporting(
        cfg: &VolumesConfig,
        sup: &SupervisorConfig,
        entry: HealthEntry,
        history_file: Option<PathBuf>,
    ) -> VolumeHandle {
        Self::start(
            cfg,
            sup,
            Some(entry),
            history_file,
            Arc::new(crate::clock::SystemClock),
        )
    }

    fn start(
        cfg: &VolumesConfig,
        sup: &SupervisorConfig,
        entry: Option<HealthEntry>,
        history_file: Option<PathBuf>,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> VolumeHandle {
        let mut defaults: Vec<VolumeName> = DEFAULT_VOLUMES
            .iter()
            .filter_map(|n| VolumeName::new(n).ok())
            .collect();
        defaults.extend(cfg.extra.iter().filter_map(|n| VolumeName::new(n).ok()));
        let actor = VolumeActor {
            settings: Arc::new(Settings {
                root: cfg.root.clone(),
                defaults,
                default_quota: cfg.default_quota.0,
                max_quota: cfg.max_quota.0,
                warn: cfg.warn_percent,
                clear: cfg.clear_percent,
                usage_max_age: cfg.usage_max_age,
                cleanup_patterns: cfg.cleanup_patterns.clone(),
                cleanup_age: cfg.cleanup_age,
                min_free: cfg.min_free.0,
                stream_idle: sup.stream_idle_timeout,
                probe_interval: sup.probe_interval,
                snapshot_keep: cfg.snapshots.keep,
                verify_on_maintenance: cfg
                    .verify_on_maintenance
                    .iter()
                    .filter_map(|n| VolumeName::new(n).ok())
                    .collect(),
                fill_warning: cfg.fill_warning,
                history_file,
                slow_io_threshold: cfg.slow_io_threshold,
            }),
            root_error: None,
            volumes: BTreeMap::new(),
            usage: HashMap::new(),
            reserved: reserve::Book::default(),
            creating: BTreeSet::new(),
            above: BTreeSet::new(),
            root: root::RootWatch::new(entry),
            history: forecast::History::default(),
            history_dirty: false,
            history_saves: Default::default(),
            filling: BTreeSet::new(),
            clock,
            probes: io::Probes::default(),
            mailbox_capacity: sup.mailbox_capacity,
        };
        VolumeHandle {
            addr: ActorThread::start("lucid-volume").start_actor(move |_| actor),
            deadline: sup.call_deadline,
        }
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    fn root_ok(&self) -> Result<(), VolumeError> {
        match &self.root_error {
            Some(reason) => Err(VolumeError::Root {
                path: self.settings.root.display().to_string(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn known(&self, name: &VolumeName) -> Result<(), VolumeError> {
        self.root_ok()?;
        if self.volumes.contains_key(name) {
            Ok(())
        } else {
            Err(VolumeError::NotFound {
                volume: name.to_string(),
            })
        }
    }

    fn check_quota(&self, quota: u64) -> Result<(), VolumeError> {
        if quota == 0 || quota > self.settings.max_quota {
            return Err(VolumeError::Invalid {
                field: "quota",
                reason: format!(
                    "must be between 1 byte and volumes.max_quota ({})",
                    ByteSize(self.settings.max_quota)
                ),
            });
        }
        Ok(())
    }

    /// Keeps the map in step with what an operation found on disk.
    fn remember(&mut self, meta: &VolumeMeta) {
        if self.volumes.get(&meta.name) != Some(meta) {
            self.usage.remove(&meta.name);
        }
        self.volumes.insert(meta.name.clone(), meta.clone());
    }

    fn info(&self, meta: VolumeMeta) -> VolumeInfo {
        let usage = self.fresh_usage(&meta.name);
        VolumeInfo {
            data_dir: store::data_dir(&self.settings.root, &meta),
            forecast: usage.map(|u| self.forecast_of(&meta.name, &u)),
            usage,
            health: None,
            meta,
        }
    }

    /// The shape of every handler that works on disk: `check` refuses the request on the
    /// actor (a volume it does not know, a quota out of range) before anything starts;
    /// `work` runs on the blocking pool with the settings; `then` takes its result in on
    /// the actor (the maps, the events) and makes the answer.
    fn on_disk<T, R>(
        &mut self,
        check: Result<(), VolumeError>,
        work: impl FnOnce(&Settings) -> Result<T, VolumeError> + Send + 'static,
        then: impl FnOnce(&mut VolumeActor, Result<T, VolumeError>) -> Result<R, VolumeError> + 'static,
    ) -> Reply<R>
    where
        T: Send + 'static,
        R: 'static,
    {
        if let Err(e) = check {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let s = self.settings();
        let work = blocking(move || work(&s));
        Box::pin(work.into_actor(self).map(|res, act, _| then(act, res)))
    }
}

impl Actor for VolumeActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
        // No message is handled before the volumes are loaded; the root's first probe follows.
        self.load(ctx);
        self.watch_root(ctx);
    }
}

/// Runs `f` on the blocking pool.
async fn blocking<T, F>(f: F) -> Result<T, VolumeError>
where
    F: FnOnce() -> Result<T, VolumeError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VolumeError::Interrupted {
            what: format!("blocking task failed: {e}"),
        })?
}

type Reply<T> = ResponseActFuture<VolumeActor, Result<T, VolumeError>>;

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<crate::supervisor::Heartbeat> for VolumeActor {
    type Result = ();

    fn handle(&mut self, _: crate::supervisor::Heartbeat, _: &mut Context<Self>) {}
}

impl Handler<crate::supervisor::Shutdown> for VolumeActor {
    type Result = ();

    /// Work already on blocking threads finishes there; its answer has nobody to go to.
    fn handle(&mut self, _: crate::supervisor::Shutdown, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<ListVolumes> for VolumeActor {
    type Result = Result<Vec<VolumeInfo>, VolumeError>;

    fn handle(&mut self, _: ListVolumes, _: &mut Context<Self>) -> Self::Result {
        self.root_ok()?;
        Ok(self
            .volumes
            .values()
            .cloned()
            .map(|m| self.info(m))
            .collect())
    }
}

impl Handler<InspectVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: InspectVolume, _: &mut Context<Self>) -> Self::Result {
        // A wedged actor, for the test that its callers still get an answer in time.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("volume-inspect-wedged");
        let cached = self.fresh_usage(&msg.name);
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            move |s| store::inspect(s, &name, cached),
            |act, res| {
                let found = res?;
                act.remember(&found.meta);
                if let (Some(usage), true) = (found.usage, found.walked) {
                    act.record_walk(&found.meta.name, usage);
                }
                let mut info = act.info(found.meta);
                info.forecast = found.usage.map(|u| act.forecast_of(&info.meta.name, &u));
                info.usage = found.usage;
                info.health = Some(found.health);
                Ok(info)
            },
        )
    }
}

impl Handler<CreateVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: CreateVolume, _: &mut Context<Self>) -> Self::Result {
        let quota = msg.quota.map_or(self.settings.default_quota, |q| q.0);
        let check = self
            .root_ok()
            .and_then(|()| self.check_quota(quota))
            .and_then(|()| {
                // Claimed now: two creates of one name cannot both pass.
                if self.volumes.contains_key(&msg.name) || !self.creating.insert(msg.name.clone()) {
                    return Err(VolumeError::Exists {
                        volume: msg.name.to_string(),
                    });
                }
                Ok(())
            });
        let name = msg.name;
        let kind = msg.kind.unwrap_or_else(|| "data".to_owned());
        let labels = msg.labels;
        self.on_disk(
            check,
            {
                let name = name.clone();
                move |s| store::create_new(s, &name, quota, kind, labels)
            },
            move |act, res| {
                act.creating.remove(&name);
                let meta = res?;
                events::emit(VolumeCreated {
                    volume: meta.name.to_string(),
                    quota_bytes: meta.quota_bytes,
                });
                act.remember(&meta);
                Ok(act.info(meta))
            },
        )
    }
}

impl Handler<DeleteVolume> for VolumeActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: DeleteVolume, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            {
                let name = name.clone();
                move |s| store::delete(s, &name, msg.force)
            },
            move |act, res| {
                res?;
                act.volumes.remove(&name);
                act.usage.remove(&name);
                act.above.remove(&name);
                act.history.forget(&name);
                act.filling.remove(&name);
                events::emit(VolumeDeleted {
                    volume: name.to_string(),
                });
                Ok(())
            },
        )
    }
}

impl Handler<ResizeVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: ResizeVolume, _: &mut Context<Self>) -> Self::Result {
        let quota = msg.quota.0;
        let name = msg.name;
        self.on_disk(
            self.known(&name).and_then(|()| self.check_quota(quota)),
            move |s| store::resize(s, &name, quota),
            |act, res| {
                let (meta, usage) = res?;
                act.remember(&meta);
                act.record_walk(&meta.name, usage);
                Ok(act.info(meta))
            },
        )
    }
}

impl Handler<MeasureUsage> for VolumeActor {
    type Result = Reply<Usage>;

    fn handle(&mut self, msg: MeasureUsage, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            move |s| {
                let meta = store::fresh_meta(s, &name)?;
                Ok((store::measure(s, &meta)?, meta))
            },
            |act, res| {
                let (usage, meta) = res?;
                act.remember(&meta);
                act.record_walk(&meta.name, usage);
                Ok(usage)
            },
        )
    }
}

impl Handler<CheckThresholds> for VolumeActor {
    type Result = Reply<Vec<VolumeName>>;

    fn handle(&mut self, _: CheckThresholds, _: &mut Context<Self>) -> Self::Result {
        let stale: Vec<VolumeName> = self
            .volumes
            .keys()
            .filter(|n| self.fresh_usage(n).is_none())
            .cloned()
            .collect();
        self.on_disk(
            self.root_ok(),
            move |s| {
                Ok(stale
                    .into_iter()
                    .map(|name| {
                        let measured = store::fresh_meta(s, &name)
                            .and_then(|meta| Ok((store::measure(s, &meta)?, meta)));
                        (name, measured)
                    })
                    .collect::<Vec<_>>())
            },
            |act, res| {
                for (name, measured) in res? {
                    match measured {
                        Ok((usage, meta)) => {
                            act.remember(&meta);
                            act.record_walk(&name, usage);
                        }
                        Err(e) => {
                            tracing::warn!(volume = %name, error = %e, "cannot measure volume")
                        }
                    }
                }
                act.save_history();
                Ok(act.above.iter().cloned().collect())
            },
        )
    }
}

impl Handler<CheckHealth> for VolumeActor {
    type Result = Reply<VolumeHealth>;

    fn handle(&mut self, msg: CheckHealth, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            move |s| Ok(store::health(s, &store::fresh_meta(s, &name)?)),
            |_, res| res,
        )
    }
}

impl Handler<Verify> for VolumeActor {
    type Result = Reply<VerifyReport>;

    fn handle(&mut self, msg: Verify, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            move |s| integrity::verify(s, &name, msg.update),
            |_, res| {
                let report = res?;
                if !report.clean() {
                    events::emit(events::VolumeIntegrityMismatch {
                        volume: report.volume.clone(),
                        added: report.added.len() as u64,
                        missing: report.missing.len() as u64,
                        changed: report.changed.len() as u64,
                    });
                }
                Ok(report)
            },
        )
    }
}

impl Handler<ExportVolume> for VolumeActor {
    type Result = Result<Feed<Vec<u8>, VolumeError>, VolumeError>;

    fn handle(&mut self, msg: ExportVolume, _: &mut Context<Self>) -> Self::Result {
        self.known(&msg.name)?;
        let s = self.settings();
        let (feeder, chunks) = feed(archive::EXPORT_BUFFER, s.stream_idle);
        // Not `on_disk`: the call answers the feed at once, and the tar writer fills it.
        tokio::task::spawn_blocking(move || {
            let exported = (|| {
                // Shared: nothing replaces or moves the data while it is read.
                let _lock = store::lock(&s, &msg.name, "export", false)?;
                let meta = store::fresh_meta(&s, &msg.name)?;
                let dir = store::data_dir(&s.root, &meta);
                fsops::check_data_dir(&dir)?;
                archive::export(&dir, &feeder)
            })();
            if let Err(e) = exported {
                feeder.fail(e);
            }
        });
        Ok(chunks)
    }
}

impl Handler<ImportVolume> for VolumeActor {
    type Result = Reply<ImportSummary>;

    fn handle(&mut self, msg: ImportVolume, _: &mut Context<Self>) -> Self::Result {
        let check = self.root_ok();
        // The source is polled here, on the actor's arbiter; the tar reader drains the channel
        // on a blocking thread.
        let (tx, rx) = mpsc::channel(archive::IMPORT_BUFFER);
        if check.is_ok() {
            actix_rt::spawn(import::forward(msg.source, tx));
        }
        let options = msg.options;
        self.on_disk(
            check,
            move |s| import::import(s, &options, rx),
            |act, res| {
                let (meta, summary, created) = res?;
                if created {
                    events::emit(VolumeCreated {
                        volume: meta.name.to_string(),
                        quota_bytes: meta.quota_bytes,
                    });
                }
                act.usage.remove(&meta.name);
                act.remember(&meta);
                Ok(summary)
            },
        )
    }
}

impl Handler<MigrateVolume> for VolumeActor {
    type Result = Reply<VolumeInfo>;

    fn handle(&mut self, msg: MigrateVolume, _: &mut Context<Self>) -> Self::Result {
        // Where every other volume's data is, as the actor knows it: a target must not overlap.
        let others: Vec<PathBuf> = self
            .volumes
            .values()
            .filter(|m| m.name != msg.name)
            .map(|m| store::data_dir(&self.settings.root, m))
            .collect();
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            move |s| migrate::migrate(s, &name, &msg.to, &others),
            |act, res| {
                let meta = res?;
                events::emit(VolumeMigrated {
                    volume: meta.name.to_string(),
                    to: meta
                        .path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                });
                act.remember(&meta);
                Ok(act.info(meta))
            },
        )
    }
}

impl Handler<CleanupVolume> for VolumeActor {
    type Result = Reply<CleanupReport>;

    fn handle(&mut self, msg: CleanupVolume, _: &mut Context<Self>) -> Self::Result {
        let name = msg.name;
        self.on_disk(
            self.known(&name),
            {
                let name = name.clone();
                move |s| cleanup::run(s, &name)
            },
            move |act, res| {
                act.usage.remove(&name);
                res
            },
        )
    }
}

impl Handler<WriteFile> for VolumeActor {
    type Result = Reply<()>;

    fn handle(&mut self, msg: WriteFile, _: &mut Context<Self>) -> Self::Result {
        let check = self.known(&msg.name);
        let needed = msg.data.len() as u64;
        // Reserved now: writes in flight together cannot all pass one quota.
        let promised = match check {
            Ok(()) => self.reserved.add(&msg.name, needed),
            Err(_) => 0,
        };
        let cached = self.fresh_usage(&msg.name);
        let name = msg.name;
        self.on_disk(
            check,
            {
                let name = name.clone();
                move |s| {
                    let room = reserve::make_room(s, &name, "write", cached, promised, needed)?;
                    let delta = store::write_file(&room.dir, &msg.path, &msg.data)?;
                    // The room, and with it the lock, ends here: the write is done.
                    Ok((room.found, delta))
                }
            },
            move |act, res| {
                act.reserved.sub(&name, needed);
                let (found, delta) = res?;
                act.take_in(&name, found);
                act.add_usage(&name, delta.bytes, delta.apparent, delta.files);
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["mongodb", "chunks-2", "a_b", "x", &"a".repeat(63)] {
            assert!(VolumeName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "/abs",
            "Upper",
            "a\0b",
            "dot.name",
            ".hidden",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(VolumeName::new(bad), Err(VolumeError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }
}
