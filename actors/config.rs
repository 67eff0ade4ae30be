//! Configuration: the typed sections (docs/configuration.md), their layers, validation and secrets.
//!
//! Layers, later wins: the defaults (`configs/lucid-db.toml`, compiled in) → one file
//! (`--config PATH`, else `/etc/lucid/lucid-db.toml` when it exists) → the environment
//! (`LUCID_DB__SECTION__KEY`). Unknown keys are errors; every error names its key. Secrets
//! come from a `<name>_file` key or `$CREDENTIALS_DIRECTORY/<section>_<name>` and are held in
//! [`Secret`]. `docs/configuration.md` lists every key; a test keeps it in step with this file.
//!
//! Plain data: this module names nothing else in the crate but the leaf [`redact`], so every
//! actor can read its section without an import cycle. It checks what a value alone decides.
//! The checks that need an actor — a schema directory that compiles, a volume name, the order
//! of the lifecycle phases — are that actor's `check_config`, and `lucid_actors::load_config`
//! runs [`load_with`] with all of them: that, not [`load`] alone, is what `config check` and
//! the daemon use. A test in `lib.rs` keeps the crate paths in this file to `redact`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::redact::{self, Secret, SecretUrl};

/// The defaults, compiled into the binary; also the shipped example file.
pub const DEFAULTS: &str = include_str!("../configs/lucid-db.toml");
/// The system-wide file, read when it exists and no `--config` is given.
pub const SYSTEM_PATH: &str = "/etc/lucid/lucid-db.toml";
/// Environment variables `LUCID_DB__SECTION__KEY` override both files.
pub const ENV_PREFIX: &str = "LUCID_DB";
/// Where the state lives when neither `state_dir` nor `$STATE_DIRECTORY` says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lucid-db";

/// The whole configuration. Section and key names are fixed: environment names and metric
/// labels derive from them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The daemon's own state (locks, catalogue); resolved to an absolute path at load.
    pub state_dir: PathBuf,
    pub log: LogConfig,
    pub supervisor: SupervisorConfig,
    pub http: HttpConfig,
    pub metrics: MetricsConfig,
    pub redis: RedisConfig,
    pub mongodb: MongoConfig,
    pub elasticsearch: ElasticsearchConfig,
    pub volumes: VolumesConfig,
    pub backup: BackupConfig,
    pub scheduler: SchedulerConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A level or tracing directives; `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// journald's native protocol when stderr is the journal, else `text`.
    Auto,
    Text,
    /// One JSON object per line, for log shippers.
    Json,
    Journald,
}

/// The shared supervision settings every actor uses (docs/architecture.md, Supervision).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    pub backoff_factor: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    #[serde(with = "humantime_serde")]
    pub reset_after: Duration,
    #[serde(with = "humantime_serde")]
    pub call_deadline: Duration,
    #[serde(with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    pub mailbox_capacity: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub bind: SocketAddr,
    /// actix-web worker threads (1 on a Pi: the actors do the work on threads of their own).
    pub workers: usize,
    /// Largest JSON request body accepted.
    pub body_limit: ByteSize,
    /// Longest a request may take before it is answered `504`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The API tokens' names, scopes and SHA-256 hashes; empty: `http/tokens.json` in
    /// `state_dir`.
    pub tokens_file: PathBuf,
    /// Requests each token may make per `rate_window` (through the Redis sliding window).
    pub rate_limit: u32,
    #[serde(with = "humantime_serde")]
    pub rate_window: Duration,
    /// Audit documents held while MongoDB is down (the oldest beyond are dropped and counted).
    pub audit_queue: usize,
}

impl HttpConfig {
    /// `tokens_file`, or its default under the state directory.
    pub fn tokens_path(&self, state_dir: &std::path::Path) -> PathBuf {
        if self.tokens_file.as_os_str().is_empty() {
            state_dir.join("http").join("tokens.json")
        } else {
            self.tokens_file.clone()
        }
    }
}

/// The Prometheus metrics (docs/metrics.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record metrics and serve `/metrics`; off, `/metrics` answers 404.
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub enabled: bool,
    pub required: bool,
    pub url: SecretUrl,
    pub password_file: PathBuf,
    /// Default TTL of cache entries.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Longest TTL a caller may ask for a cache entry.
    #[serde(with = "humantime_serde")]
    pub cache_max_ttl: Duration,
    /// Default lifetime of a session (the access-token TTL).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Default lease of a lock.
    #[serde(with = "humantime_serde")]
    pub lock_lease: Duration,
    /// Largest value (cache entry, session data) accepted, in bytes.
    pub max_value_bytes: usize,
    /// What a rate-limit check answers while Redis is unavailable.
    pub rate_limit_when_down: DownPolicy,
    /// Key patterns an import never restores (locks, rate-limit windows).
    pub not_restorable: Vec<String>,
    /// How far an import moves fencing counters past the highest value seen.
    pub fence_margin: u64,
    /// Resolved from `password_file` or the credentials directory; never read from TOML and
    /// never printed (`config check` names its origin in a comment).
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// A rate-limit decision while the backend is down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DownPolicy {
    /// Admit every request (availability first).
    Open,
    /// Refuse every request (protection first).
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    pub enabled: bool,
    pub required: bool,
    pub url: SecretUrl,
    pub database: String,
    pub password_file: PathBuf,
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Where reads go on a replica set.
    pub read_preference: ReadPreferenceMode,
    /// `default` (the server's), `majority`, or a number of members.
    pub write_concern: String,
    /// Connections per server in the driver's pool (1–1024).
    pub max_pool_size: u32,
    /// Documents per cursor batch of a streamed find, aggregate or export (1–100000): the
    /// first batch is read by the call itself, so it also bounds what a call holds at once.
    pub batch_size: u32,
    /// Run the bootstrap (collections, validators, indexes) each time MongoDB comes up.
    pub bootstrap: bool,
    /// Directory with the 15 `{collection}.json` files; empty: the ones built in.
    pub schema_dir: PathBuf,
    /// On a mongos: `enableSharding` and `shardCollection` for the collections whose file
    /// names a shard key.
    pub shard_collections: bool,
    /// Documents per insert batch in an import.
    pub import_batch: usize,
}

/// MongoDB read preference modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPreferenceMode {
    Primary,
    PrimaryPreferred,
    Secondary,
    SecondaryPreferred,
    Nearest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    pub enabled: bool,
    pub required: bool,
    pub url: SecretUrl,
    pub username: String,
    pub password_file: PathBuf,
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Primary shards of each new monthly index (its template).
    pub shards: u32,
    /// Replicas of each new monthly index (0 on a single node, else the cluster is yellow).
    pub replicas: u32,
    /// Put templates, the current month's indices and the aliases in place on connect.
    pub bootstrap: bool,
    /// A bulk request holds at most this many documents…
    pub bulk_max_docs: usize,
    /// …and this many bytes of NDJSON; a single document larger than this is refused.
    pub bulk_max_bytes: ByteSize,
    /// Bulk requests sent at once by one bulk call, and by the bulk indexer (backpressure).
    pub bulk_in_flight: usize,
    /// Retries of items the server refused with 429 or 503, with backoff.
    pub bulk_retries: u32,
    /// The bulk indexer sends a partial batch once its first document has waited this long.
    #[serde(with = "humantime_serde")]
    pub bulk_flush_interval: Duration,
    /// Lifecycle: ages since the end of an index's month.
    #[serde(with = "humantime_serde")]
    pub warm_after: Duration,
    #[serde(with = "humantime_serde")]
    pub cold_after: Duration,
    #[serde(with = "humantime_serde")]
    pub delete_after: Duration,
    /// Lifecycle deletion at all (and then only of indices a verified backup holds).
    pub lifecycle_delete: bool,
    /// The next month's index and the write alias are in place this long before it starts.
    #[serde(with = "humantime_serde")]
    pub prepare_ahead: Duration,
    pub cold_replicas: u32,
    pub cold_priority: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumesConfig {
    pub root: PathBuf,
    /// Volumes beyond the volume actor's built-in ones (its `DEFAULT_VOLUMES`).
    pub extra: Vec<String>,
    pub default_quota: ByteSize,
    pub max_quota: ByteSize,
    /// Usage at or above this percentage of the quota emits `volume.threshold_crossed`.
    pub warn_percent: u8,
    /// …and `volume.threshold_cleared` once it drops below this (hysteresis).
    pub clear_percent: u8,
    /// How long a measured usage is reused before the volume is walked again.
    #[serde(with = "humantime_serde")]
    pub usage_max_age: Duration,
    /// File-name patterns (`*`, `?`) that cleanup removes once older than `cleanup_age`.
    pub cleanup_patterns: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub cleanup_age: Duration,
    /// A filesystem with fewer bytes free than this counts as full (the data root's health
    /// entry, a volume's health).
    pub min_free: ByteSize,
    /// `volume.slow_io` when a volume's latency probes' p99 reaches this.
    #[serde(with = "humantime_serde")]
    pub slow_io_threshold: Duration,
    /// `volume.filling` when a volume's forecast says it is full sooner than this.
    #[serde(with = "humantime_serde")]
    pub fill_warning: Duration,
    /// Volumes whose integrity the scheduler's maintenance verifies.
    pub verify_on_maintenance: Vec<String>,
    pub snapshots: VolumeSnapshotsConfig,
}

/// Volume snapshots (`lucid-db volumes snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSnapshotsConfig {
    /// Snapshots kept per volume: a new one and maintenance remove the oldest beyond this
    /// (a volume's label `snapshots.keep` overrides it).
    pub keep: u32,
}

/// A size in bytes, written `10G`, `512M`, `64K`, `2T` or a plain number of bytes. The units
/// are binary (K = 1024), as `df -h` and `du -h` use them; `10GiB` and `10GB` mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size (like 10G, 512M or 4096)"))?;
        let shift = match unit
            .trim()
            .trim_end_matches("iB")
            .trim_end_matches('B')
            .to_ascii_uppercase()
            .as_str()
        {
            "" => 0,
            "K" => 10,
            "M" => 20,
            "G" => 30,
            "T" => 40,
            _ => return Err(format!("{text:?}: unknown unit (use K, M, G or T)")),
        };
        n.checked_mul(1u64 << shift)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", self.0 >> shift);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like 10G, 512M or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub compression: Compression,
    pub retention_days: u32,
    /// Retention's count rules (0: off); see `backup::retention`.
    pub keep_last: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// The verification level a good copy must have reached.
    pub min_level: MinLevel,
    /// A backup that does not fit runs the retention plan first and tries again, once.
    pub prune_before: bool,
    /// Where backups are written: the `backups` volume (`fs`) or an S3 bucket (`s3`).
    pub storage: BackupStorage,
    /// age X25519 public keys (`age1…`) every artifact is encrypted to. Parsed by the backup
    /// module (`backup::check_config`): this module does not know the age format.
    pub recipients: Vec<String>,
    /// File holding the passphrase of passphrase mode (else the `backup_passphrase` credential).
    pub passphrase_file: PathBuf,
    /// An age identity file that lets the daemon itself decrypt (for `decoded` verification on
    /// the Pi); else the `backup_identity` credential.
    pub identity_file: PathBuf,
    pub s3: BackupS3Config,
    pub volumes: BackupVolumesConfig,
    pub drill: BackupDrillConfig,
    /// Back up the stores at once instead of one after another (each store's export, and the
    /// compression of each, then compete for the disk and the CPU).
    pub parallel_stores: bool,
    #[serde(skip)]
    pub passphrase: Option<Secret>,
    /// The identity file's text, read like a secret (never printed).
    #[serde(skip)]
    pub identity: Option<Secret>,
}

/// `backup.min_level`: what a backup must have been verified to, to count as a good copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MinLevel {
    /// `decoded` when the daemon has an identity (`backup.identity_file`), else `checksummed`.
    Auto,
    Checksummed,
    Decoded,
    Drilled,
}

/// Where backups are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStorage {
    Fs,
    S3,
}

/// `backup.storage = "s3"`: the bucket and its keys (static keys only: the AWS environment,
/// `~/.aws` and instance metadata are never consulted).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupS3Config {
    /// `https://…`; empty: AWS's endpoint for `region`.
    pub endpoint: String,
    pub bucket: String,
    /// Key prefix the backups live under; empty: the bucket's root.
    pub prefix: String,
    pub region: String,
    pub access_key_id_file: PathBuf,
    pub secret_access_key_file: PathBuf,
    #[serde(skip)]
    pub access_key_id: Option<Secret>,
    #[serde(skip)]
    pub secret_access_key: Option<Secret>,
}

/// Which volumes `volumes` (all of them) means in a backup's store selection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupVolumesConfig {
    /// Volumes backed up besides the default set (every volume but mongodb, redis,
    /// elasticsearch and backups): naming a live database volume here includes it.
    pub include: Vec<String>,
    /// Volumes left out.
    pub exclude: Vec<String>,
}

/// Where a drill (`verify --level drilled`) restores what has no name of its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupDrillConfig {
    /// The Redis database index a drill restores keys into and empties afterwards: never the
    /// one `redis.url` selects.
    pub redis_db: u32,
}

/// Compression of backup artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Gzip,
}

/// Job schedules: standard 5-field cron strings (or a nickname such as `@daily`), UTC, or
/// `"off"`. Parsed and checked by the scheduler (`scheduler::check_config`), which owns what
/// a schedule means.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub backup: String,
    pub verify: String,
    pub retention: String,
    pub lifecycle: String,
    pub volume_usage: String,
    pub volume_maintenance: String,
    pub health_summary: String,
    pub jitter: SchedulerJitter,
}

/// Per job, how long after its slot a scheduled run may start at random (0: at the slot):
/// many Pis backing up to one bucket at 02:00 need not all arrive at once. Shorter than the
/// job's shortest interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerJitter {
    #[serde(with = "humantime_serde")]
    pub backup: Duration,
    #[serde(with = "humantime_serde")]
    pub verify: Duration,
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    #[serde(with = "humantime_serde")]
    pub lifecycle: Duration,
    #[serde(with = "humantime_serde")]
    pub volume_usage: Duration,
    #[serde(with = "humantime_serde")]
    pub volume_maintenance: Duration,
    #[serde(with = "humantime_serde")]
    pub health_summary: Duration,
}

/// One problem with the configuration, naming the key (`redis.url`) or the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// Every problem found, one per line. The daemon exits 78 (EX_CONFIG) on these.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl ConfigErrors {
    fn one(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            key: key.into(),
            reason: reason.into(),
        }])
    }
}

/// Where to read the layers from. Tests pass their own environment instead of the process's.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--config PATH`: must exist. `None`: [`SYSTEM_PATH`] when it exists.
    pub file: Option<PathBuf>,
    /// The environment: `LUCID_DB__*`, `STATE_DIRECTORY`, `CREDENTIALS_DIRECTORY`.
    pub env: HashMap<String, String>,
}

impl LoadOptions {
    /// The process's own environment and an optional `--config` path.
    pub fn from_process(file: Option<PathBuf>) -> Self {
        LoadOptions {
            file,
            env: std::env::vars().collect(),
        }
    }
}

/// A validated configuration and the layers it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// "defaults", the file path, and the environment variable names used (never values).
    pub sources: Vec<String>,
}

impl Config {
    /// The compiled-in defaults alone (no file, no environment), validated by [`load`]; a test
    /// in `lib.rs` holds them to the actors' checks as well.
    pub fn defaults() -> Result<Config, ConfigErrors> {
        load_values(&LoadOptions::default()).map(|l| l.config)
    }

    /// The effective configuration as TOML, URL passwords redacted; each configured secret
    /// appears as a comment naming where it came from (never its value). The output is itself
    /// a valid configuration file.
    pub fn to_redacted_toml(&self) -> String {
        let mut out = String::new();
        for (key, origin) in self.secret_origins() {
            out.push_str(&format!("# {key}: set, from {origin}\n"));
        }
        match toml::to_string(self) {
            Ok(text) => out.push_str(&text),
            Err(e) => out.push_str(&format!("# cannot render the configuration: {e}\n")),
        }
        out
    }

    /// The secrets that are set, by name (`redis.password`), with their origin.
    pub fn secret_origins(&self) -> Vec<(&'static str, &str)> {
        [
            ("redis.password", &self.redis.password),
            ("mongodb.password", &self.mongodb.password),
            ("elasticsearch.password", &self.elasticsearch.password),
            ("backup.passphrase", &self.backup.passphrase),
            ("backup.identity", &self.backup.identity),
            ("backup.s3.access_key_id", &self.backup.s3.access_key_id),
            (
                "backup.s3.secret_access_key",
                &self.backup.s3.secret_access_key,
            ),
        ]
        .into_iter()
        .filter_map(|(key, secret)| secret.as_ref().map(|s| (key, s.origin())))
        .collect()
    }
}

/// Reads, merges, deserializes and validates the layers: every check that needs nothing but
/// the value (named so that nobody takes it for the whole load: outside this crate, call
/// `lucid_actors::load_config`). The checks an actor owns (a schema directory that must compile, a volume name)
/// are not made here; `lucid_actors::load_config` adds them through [`load_with`], and that is
/// what the daemon and its commands call.
pub fn load_values(opts: &LoadOptions) -> Result<Loaded, ConfigErrors> {
    load_with(opts, |_, _| {})
}

/// [`load_values`], then `sections` on the parsed configuration, its errors reported with the rest.
/// This module names no actor, so the actors' checks of their own sections come in from the
/// caller; they run even when an earlier check failed, so every problem is reported at once.
pub fn load_with(
    opts: &LoadOptions,
    sections: impl FnOnce(&Config, &mut Vec<ConfigError>),
) -> Result<Loaded, ConfigErrors> {
    use config::{Environment, File, FileFormat};

    let mut sources = vec!["defaults".to_owned()];
    let mut builder =
        config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    match &opts.file {
        Some(path) => {
            if !path.is_file() {
                return Err(ConfigErrors::one(
                    path.display().to_string(),
                    "config file not found (given with --config)",
                ));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
            sources.push(path.display().to_string());
        }
        None if Path::new(SYSTEM_PATH).is_file() => {
            builder =
                builder.add_source(File::from(Path::new(SYSTEM_PATH)).format(FileFormat::Toml));
            sources.push(SYSTEM_PATH.to_owned());
        }
        None => {}
    }
    let env_prefix = format!("{ENV_PREFIX}__");
    let mut lucid_env: HashMap<String, String> = opts
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(&env_prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Values stay strings (a database named "0123" stays "0123"; typed keys are converted
    // when deserialized), except list keys, given comma-separated.
    for (var, key) in LIST_KEYS {
        if let Some(value) = lucid_env.remove(*var) {
            let items: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder
                .set_override(*key, items)
                .map_err(|e| ConfigErrors::one(*key, e.to_string()))?;
        }
    }
    let mut env_names: Vec<&String> = lucid_env.keys().collect();
    env_names.sort();
    sources.extend(env_names.into_iter().cloned());
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(lucid_env)),
    );

    // A syntax error names the file; its message may quote the offending line: redact it.
    let file_key = opts
        .file
        .as_ref()
        .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
    let merged = builder
        .build()
        .map_err(|e| ConfigErrors::one(file_key, one_line(&e.to_string())))?;
    let mut config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
        let key = e.path().to_string();
        // config's own messages end in " for key `x`"; the key is printed first already.
        let reason = e.inner().to_string();
        let reason = match reason.find(" for key `") {
            Some(i) => reason[..i].to_owned(),
            None => reason,
        };
        let key = if key == "." { "config".to_owned() } else { key };
        ConfigErrors::one(key, one_line(&reason))
    })?;

    let mut errors = Vec::new();
    config.state_dir = resolve_state_dir(&config.state_dir, &opts.env);
    let creds = opts.env.get("CREDENTIALS_DIRECTORY").map(PathBuf::from);
    config.redis.password = read_secret(
        &mut errors,
        "redis.password_file",
        &config.redis.password_file,
        "redis_password",
        creds.as_deref(),
    );
    config.mongodb.password = read_secret(
        &mut errors,
        "mongodb.password_file",
        &config.mongodb.password_file,
        "mongodb_password",
        creds.as_deref(),
    );
    config.elasticsearch.password = read_secret(
        &mut errors,
        "elasticsearch.password_file",
        &config.elasticsearch.password_file,
        "elasticsearch_password",
        creds.as_deref(),
    );
    let b = &mut config.backup;
    b.passphrase = read_secret(
        &mut errors,
        "backup.passphrase_file",
        &b.passphrase_file,
        "backup_passphrase",
        creds.as_deref(),
    );
    b.identity = read_secret(
        &mut errors,
        "backup.identity_file",
        &b.identity_file,
        "backup_identity",
        creds.as_deref(),
    );
    b.s3.access_key_id = read_secret(
        &mut errors,
        "backup.s3.access_key_id_file",
        &b.s3.access_key_id_file,
        "backup_s3_access_key_id",
        creds.as_deref(),
    );
    b.s3.secret_access_key = read_secret(
        &mut errors,
        "backup.s3.secret_access_key_file",
        &b.s3.secret_access_key_file,
        "backup_s3_secret_access_key",
        creds.as_deref(),
    );
    validate(&config, &mut errors);
    sections(&config, &mut errors);
    if errors.is_empty() {
        Ok(Loaded { config, sources })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Keys whose environment variable holds a comma-separated list.
const LIST_KEYS: &[(&str, &str)] = &[
    ("LUCID_DB__REDIS__NOT_RESTORABLE", "redis.not_restorable"),
    ("LUCID_DB__VOLUMES__EXTRA", "volumes.extra"),
    (
        "LUCID_DB__VOLUMES__VERIFY_ON_MAINTENANCE",
        "volumes.verify_on_maintenance",
    ),
    (
        "LUCID_DB__VOLUMES__CLEANUP_PATTERNS",
        "volumes.cleanup_patterns",
    ),
    ("LUCID_DB__BACKUP__RECIPIENTS", "backup.recipients"),
    (
        "LUCID_DB__BACKUP__VOLUMES__INCLUDE",
        "backup.volumes.include",
    ),
    (
        "LUCID_DB__BACKUP__VOLUMES__EXCLUDE",
        "backup.volumes.exclude",
    ),
];

/// An error message as one redacted line: parser messages quote the source, which may hold a
/// URL with a password.
fn one_line(message: &str) -> String {
    let joined: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    redact::text(&joined.join(" "))
}

fn resolve_state_dir(configured: &Path, env: &HashMap<String, String>) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_owned();
    }
    // systemd passes one path per StateDirectory= entry, colon-separated; ours is the first.
    match env.get("STATE_DIRECTORY").and_then(|v| v.split(':').next()) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

fn read_secret(
    errors: &mut Vec<ConfigError>,
    key: &str,
    file: &Path,
    credential: &str,
    creds_dir: Option<&Path>,
) -> Option<Secret> {
    let explicit = !file.as_os_str().is_empty();
    let (path, origin) = if explicit {
        (file.to_owned(), key.to_owned())
    } else {
        let path = creds_dir?.join(credential);
        if !path.exists() {
            return None;
        }
        let origin = format!("$CREDENTIALS_DIRECTORY/{credential}");
        (path, origin)
    };
    match std::fs::read_to_string(&path) {
        Ok(value) => {
            let secret = Secret::new(value).with_origin(origin.clone());
            // The unit's `SetCredential=<name>:\n` fallback stands for "not configured".
            if secret.expose().is_empty() && !explicit {
                None
            } else if secret.expose().is_empty() {
                errors.push(ConfigError {
                    key: origin,
                    reason: format!("{} is empty", path.display()),
                });
                None
            } else {
                Some(secret)
            }
        }
        Err(e) => {
            errors.push(ConfigError {
                key: origin,
                reason: format!("cannot read {}: {e}", path.display()),
            });
            None
        }
    }
}

fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    let mut err = |key: &str, reason: String| {
        errors.push(ConfigError {
            key: key.to_owned(),
            reason,
        })
    };

    if !c.state_dir.is_absolute() {
        err(
            "state_dir",
            format!("must be an absolute path, got {:?}", c.state_dir),
        );
    }
    if let Err(reason) = check_log_directives(&c.log.level) {
        err("log.level", reason);
    }

    let s = &c.supervisor;
    let ms = Duration::from_millis;
    // Lower bounds: below them a value is a typo (1ns) and makes the daemon spin.
    for (key, value, min) in [
        ("supervisor.backoff_base", s.backoff_base, ms(1)),
        ("supervisor.backoff_cap", s.backoff_cap, ms(1)),
        ("supervisor.reset_after", s.reset_after, ms(1)),
        ("supervisor.call_deadline", s.call_deadline, ms(10)),
        (
            "supervisor.stream_idle_timeout",
            s.stream_idle_timeout,
            ms(10),
        ),
        ("supervisor.probe_interval", s.probe_interval, ms(10)),
        ("supervisor.shutdown_timeout", s.shutdown_timeout, ms(100)),
    ] {
        if value < min {
            err(
                key,
                format!("must be at least {}", humantime::format_duration(min)),
            );
        }
    }
    if s.shutdown_timeout > Duration::from_secs(60) {
        err(
            "supervisor.shutdown_timeout",
            "must be at most 1m (and below the unit's TimeoutStopSec)".to_owned(),
        );
    }
    if s.backoff_cap < s.backoff_base {
        err(
            "supervisor.backoff_cap",
            format!(
                "must not be shorter than supervisor.backoff_base ({})",
                humantime::format_duration(s.backoff_base)
            ),
        );
    }
    if !(1..=16).contains(&s.backoff_factor) {
        err(
            "supervisor.backoff_factor",
            format!("must be between 1 and 16, got {}", s.backoff_factor),
        );
    }
    if s.call_deadline > Duration::from_secs(600) {
        err("supervisor.call_deadline", "must be at most 10m".to_owned());
    }
    if s.mailbox_capacity == 0 {
        err(
            "supervisor.mailbox_capacity",
            "must be at least 1".to_owned(),
        );
    }

    if c.http.bind.port() == 0 {
        err(
            "http.bind",
            "must name a port (0 would pick a random one nobody can find)".to_owned(),
        );
    }
    for (key, zero) in [
        ("http.workers", c.http.workers == 0),
        ("http.body_limit", c.http.body_limit.0 == 0),
        ("http.request_timeout", c.http.request_timeout.is_zero()),
        ("http.rate_limit", c.http.rate_limit == 0),
        ("http.rate_window", c.http.rate_window.is_zero()),
        ("http.audit_queue", c.http.audit_queue == 0),
    ] {
        if zero {
            err(key, "must be greater than zero".to_owned());
        }
    }

    if let Err(reason) = check_redis_url(c.redis.url.expose()) {
        err("redis.url", reason);
    }
    let r = &c.redis;
    for (key, value) in [
        ("redis.cache_ttl", r.cache_ttl),
        ("redis.cache_max_ttl", r.cache_max_ttl),
        ("redis.session_ttl", r.session_ttl),
        ("redis.lock_lease", r.lock_lease),
    ] {
        if value < Duration::from_millis(1) {
            err(key, "must be at least 1ms".to_owned());
        }
    }
    if r.cache_ttl > r.cache_max_ttl {
        err(
            "redis.cache_ttl",
            format!(
                "must not be longer than redis.cache_max_ttl ({})",
                humantime::format_duration(r.cache_max_ttl)
            ),
        );
    }
    if !(1..=512 * 1024 * 1024).contains(&r.max_value_bytes) {
        err(
            "redis.max_value_bytes",
            "must be between 1 and 536870912 (Redis's own limit)".to_owned(),
        );
    }
    for pattern in &r.not_restorable {
        if !pattern.starts_with("lucid:") {
            err(
                "redis.not_restorable",
                format!("{pattern:?} must start with \"lucid:\" (only lucid keys are exported)"),
            );
        }
    }
    if let Err(reason) = check_mongodb_url(c.mongodb.url.expose()) {
        err("mongodb.url", reason);
    }
    let wc = c.mongodb.write_concern.as_str();
    if !(wc == "default" || wc == "majority" || wc.parse::<u32>().is_ok()) {
        err(
            "mongodb.write_concern",
            "must be \"default\", \"majority\" or a number of members".to_owned(),
        );
    }
    if !(1..=1024).contains(&c.mongodb.max_pool_size) {
        err("mongodb.max_pool_size", "must be 1 to 1024".to_owned());
    }
    if !(1..=100_000).contains(&c.mongodb.batch_size) {
        err("mongodb.batch_size", "must be 1 to 100000".to_owned());
    }
    if !(1..=100_000).contains(&c.mongodb.import_batch) {
        err(
            "mongodb.import_batch",
            "must be between 1 and 100000".to_owned(),
        );
    }
    // That the files compile is the MongoDB actor's check (`mongo::check_config`).
    if !c.mongodb.schema_dir.as_os_str().is_empty() && !c.mongodb.schema_dir.is_absolute() {
        err(
            "mongodb.schema_dir",
            "must be an absolute path (or empty for the built-in schemas)".to_owned(),
        );
    }
    let es = &c.elasticsearch;
    if let Err(reason) = check_http_url(es.url.expose()) {
        err("elasticsearch.url", reason);
    }
    if !(1..=1024).contains(&es.shards) {
        err("elasticsearch.shards", "must be 1 to 1024".into());
    }
    if es.replicas > 16 {
        err("elasticsearch.replicas", "must be at most 16".into());
    }
    if !(1..=100_000).contains(&es.bulk_max_docs) {
        err("elasticsearch.bulk_max_docs", "must be 1 to 100000".into());
    }
    if !(1024..=100 * 1024 * 1024).contains(&es.bulk_max_bytes.0) {
        err("elasticsearch.bulk_max_bytes", "must be 1K to 100M".into());
    }
    if !(1..=64).contains(&es.bulk_in_flight) {
        err("elasticsearch.bulk_in_flight", "must be 1 to 64".into());
    }
    if es.bulk_retries > 10 {
        err("elasticsearch.bulk_retries", "must be at most 10".into());
    }
    if es.bulk_flush_interval < Duration::from_millis(1)
        || es.bulk_flush_interval > Duration::from_secs(60)
    {
        err(
            "elasticsearch.bulk_flush_interval",
            "must be 1ms to 60s".into(),
        );
    }
    if es.cold_replicas > 16 {
        err("elasticsearch.cold_replicas", "must be at most 16".into());
    }
    if es.cold_priority < 0 {
        err("elasticsearch.cold_priority", "must not be negative".into());
    }
    // The lifecycle phases' order is the search actor's check (`search::check_config`).
    // Volume names, the hard quota limit and cleanup patterns are the volume actor's
    // (`volume::check_config`).
    let v = &c.volumes;
    if v.default_quota.0 == 0 || v.default_quota > v.max_quota {
        err(
            "volumes.default_quota",
            format!("must be between 1 and volumes.max_quota ({})", v.max_quota),
        );
    }
    if !(1..=100).contains(&v.warn_percent) {
        err(
            "volumes.warn_percent",
            "must be between 1 and 100".to_owned(),
        );
    }
    if v.clear_percent >= v.warn_percent {
        err(
            "volumes.clear_percent",
            format!("must be below volumes.warn_percent ({})", v.warn_percent),
        );
    }
    if v.usage_max_age < Duration::from_millis(1) {
        err("volumes.usage_max_age", "must be at least 1ms".to_owned());
    }
    if !c.volumes.root.is_absolute() {
        err(
            "volumes.root",
            format!("must be an absolute path, got {:?}", c.volumes.root),
        );
    }
    // Recipients and the identity are parsed by the backup module (it knows the age format),
    // the volume names by it too (`backup::check_config`).
    if c.backup.storage == BackupStorage::S3 {
        for (key, reason) in check_s3(&c.backup.s3) {
            err(key, reason);
        }
    }

    // A drill empties its Redis database afterwards: it must not be the live one.
    if let Ok(info) = redis::IntoConnectionInfo::into_connection_info(c.redis.url.expose())
        && info.redis_settings().db() == i64::from(c.backup.drill.redis_db)
    {
        err(
            "backup.drill.redis_db",
            format!(
                "{} is the database redis.url selects: a drill empties this one afterwards",
                c.backup.drill.redis_db
            ),
        );
    }

    // Cron strings and jitters are the scheduler's (`scheduler::check_config`).
}

/// `backup.s3` with `backup.storage = "s3"`: what a value alone decides.
fn check_s3(s3: &BackupS3Config) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let b = &s3.bucket;
    // S3's bucket naming rules, so a typo is refused here rather than as a 400 at 2 am.
    if b.is_empty() {
        problems.push((
            "backup.s3.bucket",
            "required with backup.storage = \"s3\"".to_owned(),
        ));
    } else if !(3..=63).contains(&b.len())
        || !b
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        || !b.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !b.ends_with(|c: char| c.is_ascii_alphanumeric())
    {
        problems.push((
            "backup.s3.bucket",
            format!("{b:?} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')"),
        ));
    }
    if !s3.endpoint.is_empty() {
        match url::Url::parse(&s3.endpoint) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => problems.push((
                "backup.s3.endpoint",
                "must not hold credentials: use backup.s3.access_key_id_file and \
                 secret_access_key_file"
                    .to_owned(),
            )),
            Ok(_) => {
                if let Err(reason) = check_http_url(&s3.endpoint) {
                    problems.push(("backup.s3.endpoint", reason));
                }
            }
            Err(e) => problems.push(("backup.s3.endpoint", format!("not a valid URL ({e})"))),
        }
    }
    if s3.region.trim().is_empty() {
        problems.push((
            "backup.s3.region",
            "required with backup.storage = \"s3\" (us-east-1 for most S3-compatible servers)"
                .to_owned(),
        ));
    }
    if s3.prefix.split('/').any(|seg| seg == "." || seg == "..") || s3.prefix.contains('\\') {
        problems.push((
            "backup.s3.prefix",
            "must be a plain key prefix (no '.' or '..' segments)".to_owned(),
        ));
    }
    for (key, secret, credential) in [
        (
            "backup.s3.access_key_id_file",
            &s3.access_key_id,
            "backup_s3_access_key_id",
        ),
        (
            "backup.s3.secret_access_key_file",
            &s3.secret_access_key,
            "backup_s3_secret_access_key",
        ),
    ] {
        if secret.is_none() {
            problems.push((
                key,
                format!("required with backup.storage = \"s3\" (or the credential {credential})"),
            ));
        }
    }
    problems
}

/// The same parser the daemon's log filter uses, so what passes here works there.
fn check_log_directives(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let level = level.trim();
    if level.is_empty() {
        return Err("must not be empty (use \"info\")".to_owned());
    }
    // A lone word is a target filter to EnvFilter; alone it is almost surely a mistyped level.
    if !level.contains([',', '=', ':', '['])
        && !LEVELS.contains(&level.to_ascii_lowercase().as_str())
    {
        return Err(format!(
            "{level:?} is not a level (one of {})",
            LEVELS.join(", ")
        ));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?} is not a level or tracing directives: {e}"))
}

fn check_redis_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
    let shape = match url.scheme() {
        "redis" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "redis" => Err("redis:// URL has no host".to_owned()),
        "unix" | "redis+unix" if !url.path().is_empty() => Ok(()),
        "unix" | "redis+unix" => Err("unix socket URL has no path".to_owned()),
        "rediss" => Err("TLS (rediss://) is not built into this version of lucid-db yet; use redis:// on a trusted network or a local unix socket".to_owned()),
        "redis+sentinel" | "redis-sentinel" => Err("Redis Sentinel URLs are not supported yet; point redis.url at the current primary".to_owned()),
        "redis+cluster" | "redis-cluster" => Err("Redis Cluster URLs are not supported yet; lucid-db talks to one Redis server".to_owned()),
        other => Err(format!("scheme {other:?} is not a Redis URL (use redis:// or unix://)")),
    };
    shape?;
    // What the driver itself will make of it (the database number, for instance).
    redis::IntoConnectionInfo::into_connection_info(raw)
        .map(|_| ())
        .map_err(|e| redact::text(&e.to_string()))
}

fn check_mongodb_url(raw: &str) -> Result<(), String> {
    let rest = raw
        .strip_prefix("mongodb://")
        .or_else(|| raw.strip_prefix("mongodb+srv://"))
        .ok_or_else(|| "must start with mongodb:// or mongodb+srv://".to_owned())?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // MongoDB's URI format requires '/', '?', '#', ':' and '@' in credentials percent-encoded.
    if rest[authority_end..].contains('@') || authority.matches('@').count() > 1 {
        return Err(
            "percent-encode '/', '?', '#' and '@' in the user name and password (e.g. '@' as %40)"
                .to_owned(),
        );
    }
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(())
}

fn check_http_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "http" | "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        "http" | "https" => Err("URL has no host".to_owned()),
        other => Err(format!("scheme {other:?} is not http or https")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_with(file_body: Option<&str>, pairs: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = file_body.map(|body| {
            let p = dir.path().join("lucid-db.toml");
            std::fs::write(&p, body).expect("write config");
            p
        });
        load_values(&LoadOptions {
            file,
            env: env(pairs),
        })
    }

    fn keys(e: &ConfigErrors) -> Vec<&str> {
        e.0.iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults().expect("defaults valid");
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.supervisor.backoff_base, Duration::from_millis(250));
        assert_eq!(c.supervisor.backoff_cap, Duration::from_secs(30));
        assert_eq!(c.supervisor.call_deadline, Duration::from_secs(5));
        assert!(c.redis.enabled && c.redis.required);
        assert_eq!(c.http.bind, "127.0.0.1:8088".parse().expect("addr"));
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let file = "[redis]\nurl = \"redis://file-host:6379/1\"\n[supervisor]\ncall_deadline = \"2s\"\nprobe_interval = \"3s\"\n";
        let from_file = load_with(Some(file), &[]).expect("valid");
        assert_eq!(
            from_file.config.redis.url.expose(),
            "redis://file-host:6379/1"
        );
        assert_eq!(
            from_file.config.supervisor.call_deadline,
            Duration::from_secs(2)
        );
        // untouched keys keep their defaults
        assert_eq!(
            from_file.config.supervisor.backoff_cap,
            Duration::from_secs(30)
        );

        let both = load_with(
            Some(file),
            &[
                ("LUCID_DB__REDIS__URL", "redis://env-host:6379/2"),
                ("LUCID_DB__SUPERVISOR__MAILBOX_CAPACITY", "7"),
                ("LUCID_DB__REDIS__REQUIRED", "false"),
                ("LUCID_DB__STATE_DIR", "/srv/state"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("valid");
        assert_eq!(both.config.redis.url.expose(), "redis://env-host:6379/2");
        assert_eq!(both.config.supervisor.mailbox_capacity, 7);
        assert!(!both.config.redis.required);
        assert_eq!(both.config.state_dir, PathBuf::from("/srv/state"));
        // the file still wins over the defaults where env says nothing
        assert_eq!(
            both.config.supervisor.probe_interval,
            Duration::from_secs(3)
        );
        assert!(both.sources.iter().any(|s| s == "LUCID_DB__REDIS__URL"));
        assert!(!both.sources.iter().any(|s| s == "UNRELATED"));
    }

    #[test]
    fn errors_name_their_key() {
        type Env<'a> = &'a [(&'a str, &'a str)];
        let cases: [(&str, Env, &str); 9] = [
            ("[redis]\nurll = \"x\"\n", &[], "redis.urll"),
            ("bogus = 1\n", &[], "bogus"),
            ("[redis]\nurl = \"::not a url\"\n", &[], "redis.url"),
            (
                "[scheduler]\nnightly = \"0 2 * * *\"\n",
                &[],
                "scheduler.nightly",
            ),
            (
                "[scheduler.jitter]\nbackup = \"ten minutes\"\n",
                &[],
                "scheduler.jitter.backup",
            ),
            (
                "[supervisor]\ncall_deadline = \"5 parsecs\"\n",
                &[],
                "supervisor.call_deadline",
            ),
            ("", &[("LUCID_DB__HTTP__BIND", "localhost")], "http.bind"),
            (
                "[supervisor]\nbackoff_cap = \"100ms\"\n",
                &[],
                "supervisor.backoff_cap",
            ),
            // A drill empties its Redis database: never the live one.
            (
                "[redis]\nurl = \"redis://127.0.0.1:6379/3\"\n[backup.drill]\nredis_db = 3\n",
                &[],
                "backup.drill.redis_db",
            ),
        ];
        for (file, env, key) in cases {
            let err = load_with(Some(file), env).expect_err(file);
            assert_eq!(keys(&err), vec![key], "{file}: {err}");
        }
    }

    #[test]
    fn environment_values_stay_strings_until_typed() {
        let c = load_with(
            None,
            &[
                ("LUCID_DB__MONGODB__DATABASE", "0123"),
                ("LUCID_DB__ELASTICSEARCH__USERNAME", "007"),
                ("LUCID_DB__REDIS__ENABLED", "false"),
                (
                    "LUCID_DB__REDIS__NOT_RESTORABLE",
                    "lucid:locks:lock:*, lucid:x:*",
                ),
            ],
        )
        .expect("valid")
        .config;
        assert_eq!(c.mongodb.database, "0123");
        assert_eq!(c.elasticsearch.username, "007");
        assert!(!c.redis.enabled);
        assert_eq!(c.redis.not_restorable, ["lucid:locks:lock:*", "lucid:x:*"]);
    }

    #[test]
    fn values_the_daemon_could_not_use_are_refused() {
        for (env, key) in [
            (
                ("LUCID_DB__REDIS__URL", "redis://127.0.0.1:6379/abc"),
                "redis.url",
            ),
            (("LUCID_DB__HTTP__BIND", "127.0.0.1:0"), "http.bind"),
            (
                ("LUCID_DB__SUPERVISOR__BACKOFF_BASE", "500us"),
                "supervisor.backoff_base",
            ),
            (
                ("LUCID_DB__SUPERVISOR__CALL_DEADLINE", "1ns"),
                "supervisor.call_deadline",
            ),
            (
                ("LUCID_DB__SUPERVISOR__SHUTDOWN_TIMEOUT", "1h"),
                "supervisor.shutdown_timeout",
            ),
            (
                ("LUCID_DB__MONGODB__URL", "mongodb://u:pa/ss@h:27017/db"),
                "mongodb.url",
            ),
            (
                ("LUCID_DB__REDIS__NOT_RESTORABLE", "locks:*"),
                "redis.not_restorable",
            ),
            (("LUCID_DB__REDIS__CACHE_TTL", "2h"), "redis.cache_ttl"),
            (
                ("LUCID_DB__MONGODB__MAX_POOL_SIZE", "0"),
                "mongodb.max_pool_size",
            ),
            (
                ("LUCID_DB__MONGODB__MAX_POOL_SIZE", "1025"),
                "mongodb.max_pool_size",
            ),
            (("LUCID_DB__MONGODB__BATCH_SIZE", "0"), "mongodb.batch_size"),
        ] {
            let err = load_with(None, &[env]).expect_err(env.1);
            assert_eq!(keys(&err), vec![key], "{env:?}: {err}");
        }
    }

    #[test]
    fn errors_never_echo_a_password() {
        let cases = [
            ("[redis]\nurl = \"redis://:hunter2@h:6379/0\" extra\n", None),
            (
                "",
                Some(("LUCID_DB__REDIS__URL", "redis://:hunter2@[::1:6379/0")),
            ),
            (
                "",
                Some(("LUCID_DB__MONGODB__URL", "mongodb://u:hunter2/x@h/db")),
            ),
            ("", Some(("LUCID_DB__REDIS__ENABLED", "redis://:hunter2@h"))),
        ];
        for (file, env) in cases {
            let env: Vec<(&str, &str)> = env.into_iter().collect();
            let err = load_with(Some(file), &env).expect_err("invalid");
            let text = err.to_string();
            assert!(!text.contains("hunter2"), "{text}");
            assert_eq!(text.lines().count(), 1, "one line per problem: {text}");
        }
    }

    #[test]
    fn unsupported_redis_urls_are_refused_clearly() {
        for (url, needle) in [
            ("rediss://h:6379", "TLS"),
            ("redis+sentinel://h:26379/mymaster", "Sentinel"),
            ("redis+cluster://h:7000", "Cluster"),
            ("http://h", "not a Redis URL"),
        ] {
            let err = load_with(None, &[("LUCID_DB__REDIS__URL", url)]).expect_err(url);
            assert_eq!(keys(&err), vec!["redis.url"]);
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let err = load_with(
            Some("[mongodb]\nurl = \"postgres://x\"\n[volumes]\nroot = \"relative\"\n"),
            &[],
        )
        .expect_err("invalid");
        assert_eq!(keys(&err), vec!["mongodb.url", "volumes.root"]);
    }

    #[test]
    fn secrets_from_file_and_credentials_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file\n").expect("write");
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).expect("mkdir");
        std::fs::write(creds.join("mongodb_password"), "from-creds").expect("write");
        // systemd's SetCredential= fallback for a missing source: a lone newline = not set
        std::fs::write(creds.join("elasticsearch_password"), "\n").expect("write");
        let loaded = load_with(
            None,
            &[
                ("LUCID_DB__REDIS__PASSWORD_FILE", pw.to_str().expect("utf8")),
                ("CREDENTIALS_DIRECTORY", creds.to_str().expect("utf8")),
            ],
        )
        .expect("valid");
        let c = loaded.config;
        assert_eq!(
            c.redis.password.as_ref().map(Secret::expose),
            Some("from-file")
        );
        assert_eq!(
            c.mongodb.password.as_ref().map(Secret::expose),
            Some("from-creds")
        );
        assert!(c.elasticsearch.password.is_none());
        let shown = c.to_redacted_toml();
        assert!(
            !shown.contains("from-file") && !shown.contains("from-creds"),
            "{shown}"
        );
        assert!(
            shown.contains("# redis.password: set, from redis.password_file\n"),
            "{shown}"
        );
        assert!(
            shown.contains(
                "# mongodb.password: set, from $CREDENTIALS_DIRECTORY/mongodb_password\n"
            ),
            "{shown}"
        );
        // and it still loads as a configuration file
        let again = dir.path().join("again.toml");
        std::fs::write(&again, &shown).expect("write");
        load_values(&LoadOptions {
            file: Some(again),
            env: HashMap::new(),
        })
        .expect("printed config with secrets loads");

        let missing = load_with(
            None,
            &[("LUCID_DB__REDIS__PASSWORD_FILE", "/nonexistent/pw")],
        )
        .expect_err("missing secret file");
        assert_eq!(keys(&missing), vec!["redis.password_file"]);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let empty = load_with(
            None,
            &[(
                "LUCID_DB__REDIS__PASSWORD_FILE",
                empty.to_str().expect("utf8"),
            )],
        )
        .expect_err("an explicit secret file must not be empty");
        assert_eq!(keys(&empty), vec!["redis.password_file"]);
    }

    #[test]
    fn state_dir_comes_from_systemd_when_unset() {
        let c = load_with(
            None,
            &[("STATE_DIRECTORY", "/var/lib/lucid-db:/var/lib/other")],
        )
        .expect("valid")
        .config;
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/lucid-db"));
        let c = load_with(None, &[("STATE_DIRECTORY", "/run/x")])
            .expect("valid")
            .config;
        assert_eq!(c.state_dir, PathBuf::from("/run/x"));
    }

    #[test]
    fn redacted_toml_hides_url_passwords_and_round_trips() {
        let loaded = load_with(
            None,
            &[("LUCID_DB__REDIS__URL", "redis://:hunter2@h:6379/0")],
        )
        .expect("valid");
        let shown = loaded.config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis://:***@h:6379/0"), "{shown}");
        // A MongoDB URI may carry its password too (password_file wins when both are set:
        // `mongo::client_options`); a multi-host one, which the url crate cannot parse, is
        // redacted all the same.
        let mongo = load_with(
            None,
            &[(
                "LUCID_DB__MONGODB__URL",
                "mongodb://lucid:hunter2@h1:27017,h2:27017/?replicaSet=rs0",
            )],
        )
        .expect("a password in the MongoDB URI is accepted");
        let shown = mongo.config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("mongodb://lucid:***@h1:27017,h2:27017/?replicaSet=rs0"),
            "{shown}"
        );
        assert!(!format!("{:?}", mongo.config.mongodb).contains("hunter2"));
        // what config check prints is itself a valid config file
        let again = load_with(Some(&shown), &[]).expect("printed config loads");
        assert_eq!(
            again.config.supervisor.backoff_cap,
            loaded.config.supervisor.backoff_cap
        );
    }

    #[test]
    fn log_directives() {
        for ok in [
            "info",
            "warn,lucid_actors=debug",
            "lucid_actors::redis=trace",
            "OFF",
            "warn,hyper",
        ] {
            assert!(check_log_directives(ok).is_ok(), "{ok}");
        }
        for bad in ["", "loud", "lucid=verbose", "info,x=[bad"] {
            assert!(check_log_directives(bad).is_err(), "{bad}");
        }
    }
}
