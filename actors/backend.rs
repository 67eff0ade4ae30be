//! The names every other module shares: which backend ([`Backend`]) and which state its
//! connection is in ([`StateLabel`]).
//!
//! A leaf: it names nothing else in the crate, so the health registry and the events can use
//! these without depending on the supervisor that drives the state machine, and the supervisor
//! can report into both without an import cycle. The supervisor re-exports both types, so
//! `supervisor::Backend` and `supervisor::StateLabel` keep working. A test in `lib.rs` keeps
//! this file free of paths into the rest of the crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The backends lucid-db owns, and what else has an entry in the health registry. Names match
/// the config sections and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Redis,
    Mongodb,
    Elasticsearch,
    /// Not a connection: the volume actor's data root (`volumes.root`), probed like one.
    Volumes,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Mongodb => "mongodb",
            Backend::Elasticsearch => "elasticsearch",
            Backend::Volumes => "volumes",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection's state without its data (the supervisor's `ConnState` carries the data), as
/// reported by `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateLabel {
    Connecting,
    Up,
    Backoff,
    Disabled,
    /// Not a connection's: what runs here cannot do its work now and is probed again (the
    /// volumes' data root missing, read-only or full).
    Down,
}

impl fmt::Display for StateLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateLabel::Connecting => "connecting",
            StateLabel::Up => "up",
            StateLabel::Backoff => "backoff",
            StateLabel::Disabled => "disabled",
            StateLabel::Down => "down",
        })
    }
}
