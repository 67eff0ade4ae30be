//! The command line (clap derive). `docs/cli.md` describes it for operators.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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
