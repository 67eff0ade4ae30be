//! `lucid-db run`: start the actors and the HTTP API, tell systemd, keep the watchdog fed,
//! and stop cleanly on SIGTERM/SIGINT — the daemon's one signal path.
//!
//! Order: signals are hooked first (a SIGTERM right after READY=1 must not kill us
//! uncleanly); then the actors start (a backend that is down does not hold anything back);
//! then HTTP binds; then READY=1. On a signal: STOPPING=1, the actors drain, HTTP stops, all
//! within `supervisor.shutdown_timeout`.

use std::time::{Duration, Instant};

use lucid_actors::config::Loaded;
use lucid_actors::events::{
    self, DaemonReady, DaemonStarted, DaemonStopped, DaemonStopping, WatchdogSkipped,
};
use lucid_actors::state::DaemonLock;
use lucid_actors::{Handles, HealthRegistry, Roles, StateDir};
use tokio::signal::unix::{SignalKind, signal};

use crate::exit;
use crate::http::{self, ApiState};
use crate::notify::Notifier;

pub async fn run(loaded: Loaded) -> u8 {
    let config = loaded.config;
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return exit::TEMPFAIL;
        }
    };
    // A missing or unwritable data root is a configuration error: no restart will fix it.
    if let Err(e) = lucid_actors::volume::check_root(&config.volumes.root) {
        tracing::error!(key = "volumes.root", error = %e, "cannot use the data root");
        eprintln!("lucid-db: volumes.root: {e}");
        return exit::CONFIG;
    }
    // The daemon writes its catalogue, run records and lock files here (systemd creates it as
    // StateDirectory=; outside systemd the daemon does, mode 0750).
    let state_dir = StateDir::new(&config.state_dir);
    if let Err(e) = state_dir.ensure() {
        tracing::error!(key = "state_dir", error = %e, "cannot use the state directory");
        eprintln!("lucid-db: state_dir: {e}");
        return exit::CONFIG;
    }
    // Held until the daemon exits: CLI commands that must not run beside it (a restore) ask.
    let _daemon_lock = match DaemonLock::acquire(&state_dir) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            tracing::error!(
                key = "state_dir",
                "another lucid-db daemon runs with this state directory"
            );
            eprintln!(
                "lucid-db: another lucid-db daemon runs with state_dir {}",
                config.state_dir.display()
            );
            return exit::TEMPFAIL;
        }
        Err(e) => {
            tracing::error!(key = "state_dir", error = %e, "cannot use the state directory");
            eprintln!("lucid-db: state_dir: {e}");
            return exit::CONFIG;
        }
    };
    events::emit(DaemonStarted {
        version: env!("CARGO_PKG_VERSION"),
        config_sources: loaded.sources.join(","),
    });

    let started = Instant::now();
    let handles = lucid_actors::start(&config, Roles::DAEMON);
    // Subscribed before the first STATUS=, so no change between the two is missed.
    let changes = handles.registry.subscribe();
    let state = ApiState::new(&config, handles.clone(), started);
    let server = match http::serve(config.http.bind, state, config.supervisor.shutdown_timeout) {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(addr = %config.http.bind, error = %e, "cannot listen for HTTP");
            handles.shutdown(config.supervisor.shutdown_timeout).await;
            return exit::TEMPFAIL;
        }
    };
    let server_handle = server.handle();
    actix_rt::spawn(server);

    let notifier = Notifier::start();
    notifier.ready(handles.registry.summary());
    events::emit(DaemonReady {
        http_addr: config.http.bind.to_string(),
    });
    let status = actix_rt::spawn(report_status(
        handles.registry.clone(),
        changes,
        notifier.clone(),
    ));
    // A zero or absurdly small WATCHDOG_USEC is a misconfiguration, not a reason to spin.
    let watchdog = sd_notify::watchdog_enabled()
        .filter(|period| *period >= Duration::from_millis(2))
        .map(|period| actix_rt::spawn(feed_watchdog(handles.clone(), period, notifier.clone())));

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    notifier.stopping();
    events::emit(DaemonStopping { signal });
    // Stopping is not a stalled loop: no more watchdog pings or status lines.
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    status.abort();

    // HTTP first (requests in flight finish, new ones are refused), then the actors.
    let drain_started = Instant::now();
    let timeout = config.supervisor.shutdown_timeout;
    let drained = tokio::time::timeout(timeout, async {
        server_handle.stop(true).await;
        handles
            .shutdown(timeout.saturating_sub(drain_started.elapsed()))
            .await;
    })
    .await;
    // STOPPING=1 goes out from the notify thread: let it, before the process ends.
    notifier.flush(Duration::from_secs(1));
    events::emit(DaemonStopped {
        code: if drained.is_ok() {
            "drained"
        } else {
            "drain_timeout"
        },
        elapsed_ms: drain_started.elapsed().as_millis() as u64,
    });
    exit::OK
}

/// STATUS= carries the one-line health summary, rewritten on every state change.
async fn report_status(
    registry: HealthRegistry,
    mut changes: tokio::sync::watch::Receiver<u64>,
    notifier: Notifier,
) {
    while changes.changed().await.is_ok() {
        notifier.status(registry.summary());
    }
}

/// WATCHDOG=1 at half the watchdog period, and only after every actor answered a round trip:
/// a wedged event loop stops the pings and systemd restarts the daemon.
async fn feed_watchdog(handles: Handles, period: Duration, notifier: Notifier) {
    let mut tick = tokio::time::interval(period / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match handles.heartbeat(period / 4).await {
            Ok(()) => notifier.watchdog(),
            Err(e) => events::emit(WatchdogSkipped {
                code: e.code(),
                error: e.to_string(),
            }),
        }
    }
}
