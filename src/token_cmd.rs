//! `lucid-db token add|ls|revoke`: the HTTP API's bearer tokens, in `http.tokens_file`. The
//! file holds names, scopes and SHA-256 hashes only; a new token is printed once, alone on
//! stdout, so `TOKEN=$(lucid-db token add svc --scope read)` captures exactly it. A running
//! daemon re-reads the file within seconds: no restart, no call to it.

use lucid_actors::Config;
use lucid_actors::state::{self, StateError};
use serde_json::json;

use crate::cli::TokenCommand;
use crate::exit;
use crate::http::auth::{Scope, TokensFile};

pub fn run(config: &Config, command: TokenCommand, json: bool) -> u8 {
    let path = config.http.tokens_path(&config.state_dir);
    // A root `token add` beside a daemon running as `User=lucid` would leave a file the daemon
    // cannot read: refuse, naming the owner, like every other command that writes state.
    if !matches!(command, TokenCommand::Ls) {
        let dir = path.parent().unwrap_or(&config.state_dir);
        for p in [config.state_dir.as_path(), dir, path.as_path()] {
            if let Err(e) = state::check_owner(p) {
                eprintln!("lucid-db token: {e}");
                return match e {
                    StateError::ForeignOwner { .. } => exit::NOPERM,
                    StateError::Unusable { .. } => exit::CONFIG,
                };
            }
        }
    }
    let mut file = match TokensFile::read(&path) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("lucid-db token: {e}");
            return exit::CONFIG;
        }
    };
    match command {
        TokenCommand::Add { name, scope } => {
            let scope = match Scope::parse(&scope) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("lucid-db token: {e}");
                    return exit::USAGE;
                }
            };
            let token = match file.add(&name, scope) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("lucid-db token: {e}");
                    return exit::USAGE;
                }
            };
            if let Err(e) = file.write(&path) {
                eprintln!("lucid-db token: {e}");
                return exit::FAILED;
            }
            println!("{token}");
            eprintln!(
                "lucid-db token: {name} ({}) added to {}; the token is shown only now",
                scope.as_str(),
                path.display()
            );
            exit::OK
        }
        TokenCommand::Ls => {
            if json {
                let rows: Vec<_> = file
                    .tokens
                    .iter()
                    .map(|t| json!({"name": t.name, "scope": t.scope, "created": t.created}))
                    .collect();
                match serde_json::to_string_pretty(&rows) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("lucid-db token: {e}");
                        return exit::FAILED;
                    }
                }
            } else {
                println!("{:<32} {:<6} CREATED", "NAME", "SCOPE");
                for t in &file.tokens {
                    println!("{:<32} {:<6} {}", t.name, t.scope.as_str(), t.created);
                }
            }
            exit::OK
        }
        TokenCommand::Revoke { name } => {
            if !file.revoke(&name) {
                eprintln!("lucid-db token: no token named {name:?}");
                return exit::FAILED;
            }
            if let Err(e) = file.write(&path) {
                eprintln!("lucid-db token: {e}");
                return exit::FAILED;
            }
            eprintln!("lucid-db token: {name} revoked");
            exit::OK
        }
    }
}
