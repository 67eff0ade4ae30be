//! The one store actor a `lucid-db mongo …` or `lucid-db search …` command talks to, started in
//! the command's own process with the daemon's settings: the command then speaks to it in
//! messages, like every other caller, and never holds a driver connection of its own.
//!
//! Only that backend's actor starts ([`Roles::SIBLING`], the other stores turned off), whether
//! or not the daemon's configuration enables or requires it — the operator asked for it by
//! name, as when these commands connected by themselves. Its bootstrap at connect is off: a
//! `--dry-run` must change nothing, and `stats` nothing either; the `bootstrap` commands run it
//! as a message. The command waits until the actor is connected, at most the call deadline,
//! through failed attempts and backoff, and exits 69 otherwise.

use std::time::Duration;

use lucid_actors::{Backend, Config, Handles, Roles};

use crate::exit;

/// How long a whole bootstrap or lifecycle run may take. Each request in it has its own
/// deadline (the call deadline; a force-merge up to 30 minutes), which is what bounds it in
/// practice; this only makes sure the command ends. Six hours: a lifecycle run with a few
/// force-merges of large indices takes hours on a Pi.
pub const WHOLE_RUN: Duration = Duration::from_secs(6 * 3600);

/// Starts `backend`'s actor and waits until it is connected; on failure, says why on stderr
/// (prefixed with `command`) and answers the exit code.
pub async fn connect(config: &Config, backend: Backend, command: &str) -> Result<Handles, u8> {
    let mut config = config.clone();
    config.redis.enabled = backend == Backend::Redis;
    config.mongodb.enabled = backend == Backend::Mongodb;
    config.mongodb.bootstrap = false;
    config.elasticsearch.enabled = backend == Backend::Elasticsearch;
    config.elasticsearch.bootstrap = false;
    let deadline = config.supervisor.call_deadline;
    let handles = lucid_actors::start(&config, Roles::SIBLING);
    let status = handles.registry.wait_up(backend, deadline).await;
    match status {
        Some(s) if s.is_up() => Ok(handles),
        // The actor could not start: its schema files or templates (checked with the
        // configuration, so only a file changed since), or a URL the driver refuses.
        Some(s) if s.reason.is_some() => {
            eprintln!(
                "lucid-db {command}: {backend} cannot run: {}",
                s.reason.unwrap_or_default()
            );
            Err(exit::CONFIG)
        }
        status => {
            let why = status
                .and_then(|s| s.last_error)
                .map(|e| format!(": {} ({})", e.message, e.code))
                .unwrap_or_default();
            eprintln!(
                "lucid-db {command}: cannot reach {backend} within {}s{why}",
                deadline.as_secs_f64()
            );
            Err(exit::UNAVAILABLE)
        }
    }
}
