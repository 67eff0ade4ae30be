//! `lucid-db`: the daemon and its command line.
//!
//! # Layout
//!
//! - `main` — parse the command line, load the configuration, dispatch.
//! - `cli` — the clap definitions.
//! - `daemon` — `lucid-db run`: actors, HTTP, systemd notify and watchdog, the signal path.
//! - `http` — the HTTP API (docs/http.md).
//! - `token_cmd` — `lucid-db token …`: the API's bearer tokens.
//! - `client` — the CLI as the running daemon's HTTP client.
//! - `health_cmd` — `lucid-db health`.
//! - `backup_cmd` — `lucid-db backup …`.
//! - `mongo_cmd` — `lucid-db mongo …`.
//! - `search_cmd` — `lucid-db search …`.
//! - `schedule_cmd` — `lucid-db schedule …`.
//! - `stores` — the one store actor a `mongo` or `search` command starts and talks to.
//! - `volumes_cmd` — `lucid-db volumes …`.
//! - `logging` — journald, JSON or text on stderr.
//! - `exit` — exit codes.
//!
//! No driver crate is used here: everything goes through `lucid_actors` messages.

mod backup_cmd;
mod cli;
mod client;
mod daemon;
mod exit;
mod health_cmd;
mod http;
mod logging;
mod mongo_cmd;
mod notify;
mod schedule_cmd;
mod search_cmd;
mod stores;
mod token_cmd;
mod volumes_cmd;

use std::process::ExitCode;

use clap::Parser;
use lucid_actors::config::{self, LoadOptions};

use crate::cli::{Cli, Command, ConfigCommand};

fn main() -> ExitCode {
    lucid_actors::failpoints_from_env();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    // Every check, the actors' of their own sections included (`config::load_values` alone is not).
    let loaded = match lucid_actors::load_config(&LoadOptions::from_process(cli.config.clone())) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("lucid-db: invalid configuration (exit {}):", exit::CONFIG);
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(exit::CONFIG);
        }
    };
    let code = match cli.command {
        Command::Run => {
            if let Err(e) = logging::init(&loaded.config.log, cli.log_format, None) {
                eprintln!("lucid-db: cannot set up logging: {e}");
                return ExitCode::from(exit::CONFIG);
            }
            let system = actix_rt::System::new();
            let code = system.block_on(daemon::run(loaded));
            exit_now(code)
        }
        Command::Config {
            command: ConfigCommand::Check { json },
        } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("warn"));
            config_check(&loaded, json)
        }
        Command::Backup { command, json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            let system = actix_rt::System::new();
            let code = system.block_on(backup_cmd::run(
                &loaded.config,
                command,
                json,
                cli.token_file.as_deref(),
            ));
            exit_now(code)
        }
        Command::Schedule { command, json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            let system = actix_rt::System::new();
            let code = system.block_on(schedule_cmd::run(
                &loaded.config,
                command,
                json,
                cli.token_file.as_deref(),
            ));
            exit_now(code)
        }
        Command::Volumes { command, json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            let system = actix_rt::System::new();
            let code = system.block_on(volumes_cmd::run(
                &loaded.config,
                command,
                json,
                cli.token_file.as_deref(),
            ));
            exit_now(code)
        }
        Command::Mongo { command, json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            let system = actix_rt::System::new();
            let code = system.block_on(mongo_cmd::run(&loaded.config, command, json));
            exit_now(code)
        }
        Command::Search { command, json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            let system = actix_rt::System::new();
            let code = system.block_on(search_cmd::run(&loaded.config, command, json));
            exit_now(code)
        }
        Command::Token { command, json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            token_cmd::run(&loaded.config, command, json)
        }
        Command::Health { json } => {
            let _ = logging::init(&loaded.config.log, cli.log_format, Some("error"));
            let system = actix_rt::System::new();
            let code = system.block_on(health_cmd::run(&loaded.config, json));
            exit_now(code)
        }
    };
    ExitCode::from(code)
}

/// Exits while the actix runtime is still alive: dropping it would wait for blocking-pool work
/// (a DNS lookup to an unreachable server, say) past systemd's stop timeout.
fn exit_now(code: u8) -> ! {
    std::process::exit(i32::from(code))
}

/// `lucid-db config check`: the effective configuration, secrets redacted.
fn config_check(loaded: &config::Loaded, json: bool) -> u8 {
    // Valid, but probably not meant (backups that would be written unencrypted): said on
    // stderr, so the printed configuration stays a valid file; the exit code stays 0.
    let warnings = lucid_actors::config_warnings(&loaded.config);
    for w in &warnings {
        eprintln!("lucid-db: warning: {w}");
    }
    if json {
        let secrets: serde_json::Map<String, serde_json::Value> = loaded
            .config
            .secret_origins()
            .into_iter()
            .map(|(key, origin)| (key.to_owned(), format!("set, from {origin}").into()))
            .collect();
        let report = serde_json::json!({
            "layers": loaded.sources,
            "secrets": secrets,
            "warnings": warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "config": loaded.config,
        });
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("lucid-db: cannot render the configuration: {e}");
                return exit::CONFIG;
            }
        }
    } else {
        println!(
            "# lucid-db {} — effective configuration, secrets redacted",
            env!("CARGO_PKG_VERSION")
        );
        println!("# layers: {}", loaded.sources.join(", "));
        print!("{}", loaded.config.to_redacted_toml());
    }
    exit::OK
}
