//! The command line (clap derive). `docs/cli.md` describes it for operators.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use lucid_actors::backup::StoreSelector;
use lucid_actors::volume::VolumeName;

/// lucid-db: the storage layer of the Lucid system.
#[derive(Debug, Parser)]
#[command(name = "lucid-db", version, about, max_term_width = 100)]
pub struct Cli {
    /// Configuration file [default: /etc/lucid/lucid-db.toml when it exists].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format on stderr; overrides `log.format`.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    /// The API token's file (the token alone; `lucid-db token add`): commands that change
    /// data go through a running daemon's API with it. Not read when no daemon runs.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = crate::client::TOKEN_FILE_ENV
    )]
    pub token_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: actors, HTTP API, systemd notify; stops on SIGTERM or SIGINT.
    Run,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Health of every enabled backend: asks the running daemon, else probes directly.
    /// Exit 0 when every required backend is up, 69 otherwise.
    Health {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// MongoDB: the Lucid collections, their validators and indexes.
    Mongo {
        #[command(subcommand)]
        command: MongoCommand,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Elasticsearch: templates, monthly indices and their lifecycle.
    Search {
        #[command(subcommand)]
        command: SearchCommand,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Backups: run one now, list them, show one, verify one, make a key.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The scheduler's jobs: their schedules and recorded runs; run one now.
    Schedule {
        #[command(subcommand)]
        command: ScheduleCommand,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The data volumes under `volumes.root`.
    Volumes {
        #[command(subcommand)]
        command: VolumesCommand,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The HTTP API's bearer tokens in `http.tokens_file` (a running daemon sees changes
    /// within seconds).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token: printed alone on stdout, once; only its SHA-256 is stored.
    Add {
        /// 1-64 of A-Z a-z 0-9 _ - .
        name: String,
        /// read, write (read and change data) or admin (also restore, delete by filter,
        /// release another holder's lock).
        #[arg(long, value_parser = ["read", "write", "admin"])]
        scope: String,
    },
    /// The tokens: name, scope, creation time (never the token).
    Ls,
    /// Remove a token; requests with it are refused within seconds.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum VolumesCommand {
    /// Every volume with its usage (measured now when not fresh).
    Ls,
    /// One volume: metadata, usage, health.
    Inspect { name: String },
    /// Create a volume.
    Create {
        name: String,
        /// Quota (10G, 512M, …) [default: volumes.default_quota].
        #[arg(long)]
        quota: Option<String>,
        /// What it holds.
        #[arg(long)]
        kind: Option<String>,
        /// A label KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Delete a volume and its data; a non-empty one only with --force.
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Set a volume's quota (never below its current use).
    Resize { name: String, quota: String },
    /// Check a volume against its integrity manifest (built on first use). Exit 65 on a mismatch.
    Verify {
        name: String,
        /// Re-seal the manifest after an intended change.
        #[arg(long, conflicts_with = "snapshot")]
        update: bool,
        /// Check this snapshot against the manifest sealed when it was taken.
        #[arg(long)]
        snapshot: Option<String>,
    },
    /// Take a snapshot of a volume (a reflink copy where the filesystem has them, else a plain
    /// copy); prints its name.
    Snapshot {
        name: String,
        /// The snapshot's name [default: the time, UTC, YYYYMMDD-HHMMSS].
        #[arg(long = "name", value_name = "SNAP")]
        snapshot: Option<String>,
        /// A note kept with the snapshot.
        #[arg(long)]
        label: Option<String>,
        /// Snapshot a live database volume (mongodb, redis, elasticsearch): consistent file by
        /// file only, so stop its server first.
        #[arg(long)]
        allow_live: bool,
    },
    /// I/O figures of one volume or all: its device's read/write bytes and operations per
    /// second and busy time over a short interval, and a latency probe (4 KiB write + fsync).
    Stats { name: Option<String> },
    /// A volume's snapshots, oldest first.
    Snapshots { name: String },
    /// Replace a volume's data with a snapshot's (the current data is kept until the swap).
    RestoreSnapshot {
        name: String,
        snapshot: String,
        /// Replace data the volume holds (and a live database volume's: stop its server first).
        #[arg(long)]
        force: bool,
    },
    /// Remove a snapshot.
    DeleteSnapshot { name: String, snapshot: String },
    /// Remove old temporary files (volumes.cleanup_patterns older than volumes.cleanup_age).
    Cleanup { name: String },
    /// Move a volume's data to another path: copy, verify, then switch.
    Migrate {
        name: String,
        to: std::path::PathBuf,
    },
}

impl VolumesCommand {
    /// The volume a command names, if any.
    pub fn volume(&self) -> Option<&str> {
        match self {
            VolumesCommand::Ls => None,
            VolumesCommand::Stats { name } => name.as_deref(),
            VolumesCommand::Inspect { name }
            | VolumesCommand::Create { name, .. }
            | VolumesCommand::Delete { name, .. }
            | VolumesCommand::Resize { name, .. }
            | VolumesCommand::Verify { name, .. }
            | VolumesCommand::Cleanup { name }
            | VolumesCommand::Migrate { name, .. }
            | VolumesCommand::Snapshot { name, .. }
            | VolumesCommand::Snapshots { name }
            | VolumesCommand::RestoreSnapshot { name, .. }
            | VolumesCommand::DeleteSnapshot { name, .. } => Some(name),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up now and wait for the outcome; progress lines on stderr. Exit 0 complete,
    /// 3 partial, 1 failed, 69 when every selected store (or the storage) is unavailable,
    /// 75 when another backup runs, 78 on a configuration problem.
    Now {
        /// What to back up, comma-separated: volumes, volumes:NAME, mongodb,
        /// mongodb:COLLECTION, redis, elasticsearch, elasticsearch:INDEX [default: every store
        /// that runs, under one id].
        #[arg(long, value_delimiter = ',', value_name = "STORES", value_parser = parse_store)]
        stores: Vec<StoreSelector>,
    },
    /// Every complete backup, oldest first, with what it counts as.
    List,
    /// One backup: its manifest and verification results.
    Show { id: String },
    /// Verify a backup against what storage holds now; the result goes into its verify.json.
    /// Exit 65 when an artifact (or the manifest) is corrupt or does not open.
    Verify {
        id: String,
        /// checksummed: sizes and SHA-256, no key needed; decoded: also decrypt, decompress and
        /// parse every artifact (needs an identity: --identity, backup.identity_file, or
        /// passphrase mode's key.age with the configured passphrase); drilled: also restore
        /// every store into scratch targets (drill-…), compare, and remove them.
        #[arg(long, value_enum, default_value = "checksummed")]
        level: VerifyLevel,
        /// An age identity file (as `backup keygen` or `age-keygen` write).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
    },
    /// Restore a backup into the stores. Every selected artifact's SHA-256 is checked and
    /// every target looked at before anything is written; a target that holds data is refused
    /// (exit 1, naming it) unless --force. Refused while the daemon runs (exit 75): stop it
    /// first. Exit 65 when an artifact is damaged, 64 when the selection names what the backup
    /// does not hold.
    Restore {
        id: String,
        /// What to restore, comma-separated: volumes, volumes:NAME, mongodb, mongodb:COLL, redis,
        /// elasticsearch, elasticsearch:INDEX [default: everything the backup holds].
        #[arg(long, value_delimiter = ',', value_name = "STORES", value_parser = parse_store)]
        stores: Vec<StoreSelector>,
        /// An age identity file (as `backup keygen` or `age-keygen` write).
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Restore the one selected volume into this volume instead.
        #[arg(long, value_name = "NAME", value_parser = parse_volume)]
        to_volume: Option<VolumeName>,
        /// Restore MongoDB collections into this database instead of mongodb.database.
        #[arg(long, value_name = "NAME", value_parser = parse_database)]
        to_db: Option<String>,
        /// Restore Redis keys into this database index instead of the one redis.url selects.
        #[arg(long, value_name = "N")]
        to_redis_db: Option<u32>,
        /// Put P before every restored Elasticsearch index and alias name (a-z 0-9 - _).
        #[arg(long, value_name = "P", value_parser = parse_index_prefix)]
        index_prefix: Option<String>,
        /// Replace targets that hold data.
        #[arg(long)]
        force: bool,
    },
    /// Apply retention: delete every backup no rule keeps (backup.retention_days, keep_last,
    /// keep_daily, keep_weekly, keep_monthly), never a pinned one, one being read, or the
    /// newest good copy (verified to backup.min_level) of any volume, collection, index or
    /// Redis database. Prints each backup, kept or deleted, and the rules that decided.
    /// Exit 75 while the clock cannot be trusted, or another backup, restore or prune runs.
    Prune {
        /// Print the plan and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pin a backup: retention keeps it until it is unpinned. Stored beside the backup.
    Pin {
        id: String,
        /// Why (shown by `backup show`).
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Remove every pin of a backup.
    Unpin { id: String },
    /// Delete one backup. Refused (exit 1) when it is pinned or the newest good copy of
    /// something, unless --force; refused (exit 75) while it is being read.
    Delete {
        id: String,
        /// Delete it even when pinned or the newest good copy of something.
        #[arg(long)]
        force: bool,
    },
    /// Write a new age identity to FILE (mode 0600; never overwrites) and print its public
    /// key, for backup.recipients. Keep FILE off the Pi.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyLevel {
    Checksummed,
    Decoded,
    Drilled,
}

fn parse_store(text: &str) -> Result<StoreSelector, String> {
    text.parse()
}

fn parse_volume(text: &str) -> Result<VolumeName, String> {
    VolumeName::new(text).map_err(|e| e.to_string())
}

fn parse_database(text: &str) -> Result<String, String> {
    lucid_actors::mongo::check_database_name(text).map(|()| text.to_owned())
}

fn parse_index_prefix(text: &str) -> Result<String, String> {
    lucid_actors::search::check_prefix(text)
        .map(|()| text.to_owned())
        .map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Every job: its schedule (UTC), next run, last run, outcome and duration, from the run
    /// records the daemon wrote.
    Ls,
    /// A job's recorded runs (the last 100), oldest first.
    History {
        /// backup, verify, retention, lifecycle, volume_usage, volume_maintenance,
        /// health_summary.
        job: String,
    },
    /// Run a job now, in this process, and record it. Only while no daemon runs (exit 75
    /// otherwise). Exit 0 ok, 1 failed, 3 a partial backup, 69 unavailable, 75 busy or the
    /// clock cannot be trusted.
    Run { job: String },
}

#[derive(Debug, Subcommand)]
pub enum MongoCommand {
    /// Create missing collections (with validators) and indexes, update changed validators,
    /// shard configured collections on a mongos; report drift. Idempotent.
    /// Exit 69 when MongoDB cannot be reached, 1 when a command fails.
    Bootstrap {
        /// Print the plan (the commands, exactly as they would be sent) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Topology, database and per-collection stats.
    Stats,
}

#[derive(Debug, Subcommand)]
pub enum SearchCommand {
    /// Put the index templates, this month's indices and the aliases in place. Idempotent.
    /// Exit 69 when Elasticsearch cannot be reached, 1 when a request fails.
    Bootstrap,
    /// The lifecycle plan (warm, cold, delete, next month's index and write alias) at this
    /// time: printed, and applied only with --apply. Exit 1 when an action failed.
    Lifecycle {
        /// Print the plan and change nothing (the default).
        #[arg(long, conflicts_with = "apply")]
        dry_run: bool,
        /// Apply the plan, one action at a time.
        #[arg(long)]
        apply: bool,
        /// An index a verified backup holds (repeatable). Deletion needs this and
        /// elasticsearch.lifecycle_delete = true.
        #[arg(long = "backed-up", value_name = "INDEX")]
        backed_up: Vec<String>,
        /// Plan as of this time (RFC 3339, e.g. 2027-03-01T00:00:00Z) instead of now.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
    },
    /// Cluster health and every lucid-* index: documents, bytes, phase.
    Stats,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective values (secrets redacted).
    /// Exit 78 with one line per problem when it is invalid.
    Check {
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}
