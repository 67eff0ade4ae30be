//! The one import contract every store offers — what the backup actor restores through
//! (docs/architecture.md, Streams and deadlines).
//!
//! Each store's handle has `import(options, source)`:
//! - [`ImportOptions<T>`]: the store's own target `T` (a MongoDB database and collection, a
//!   Redis database index, an Elasticsearch index prefix, a volume) and what to do with a
//!   target that is there already ([`Existing`]). The rule is decided once, here
//!   ([`Existing::admit`]); each store only says what it found ([`TargetState`]).
//! - `source`: any `Stream<Item = Result<item, E>>` — an export's `Feed` as well as a decoder
//!   over an artifact. An `Err` from it fails the import with the store's
//!   `import_source_failed` and the count written so far — a restore that read half its
//!   artifact must never look complete; a source that yields nothing for
//!   `supervisor.stream_idle_timeout` fails it with `stream_idle`. The handle boxes it into a
//!   [`Source`] (errors as text) so it can travel in a message to the store's actor, which
//!   runs the import on its own arbiter.
//! - the answer, [`ImportSummary<D>`]: items read, written and skipped (by reason), the time
//!   taken, and the store's own details `D`.
//!
//! A leaf: it names no other module of the crate, so every store uses it and none reaches
//! another through it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{FutureExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Options

/// Where an import goes and what it may do to a target that is there already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions<T> {
    /// The store's own target (each store's `ImportTarget`).
    pub target: T,
    pub existing: Existing,
}

impl<T> ImportOptions<T> {
    /// Into `target`, refusing it only when it holds data ([`Existing::RefuseNonEmpty`]).
    pub fn new(target: T) -> Self {
        ImportOptions {
            target,
            existing: Existing::default(),
        }
    }

    /// With another rule for a target that is there already.
    pub fn existing(mut self, existing: Existing) -> Self {
        self.existing = existing;
        self
    }
}

/// What an import does with a target that exists already.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Existing {
    /// Refuse a target that holds data; one that exists but holds nothing counts as empty and
    /// is imported into. What a restore without `--force` does: a fresh node's bootstrap has
    /// already created empty collections, indices and volumes, and they must not be in the way.
    #[default]
    RefuseNonEmpty,
    /// Refuse a target that exists at all, even an empty one (a drill that must land on
    /// nothing).
    RefuseAny,
    /// Replace a target that holds data (`--force`). What replacing means is each store's:
    /// MongoDB drops the collection first, Elasticsearch deletes the index, a volume's content
    /// is swapped for the import's; Redis writes over the keys it restores and keeps the others.
    Replace,
}

/// What a store found where an import is to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Nothing there.
    Missing,
    /// There, holding nothing an import would write over.
    Empty,
    /// There, holding data.
    Holding,
}

/// What an import does, given the rule and what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Import into the target (creating it when missing).
    Into,
    /// Replace what the target holds.
    Replace,
    /// Refuse: the target holds data (the store's `not_empty`).
    NotEmpty,
    /// Refuse: the target exists, though empty (the store's `exists`).
    Exists,
}

impl Existing {
    /// The one rule every store applies.
    pub fn admit(self, found: TargetState) -> Admission {
        match (found, self) {
            (TargetState::Missing, _) => Admission::Into,
            (TargetState::Empty, Existing::RefuseAny) => Admission::Exists,
            (TargetState::Empty, _) => Admission::Into,
            (TargetState::Holding, Existing::Replace) => Admission::Replace,
            (TargetState::Holding, _) => Admission::NotEmpty,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The restore gate

/// Held while an import writes into a store's live data (a restore in the daemon): the store's
/// own writes answer [`Restoring`] meanwhile — at once, a clear `busy`, never a wait behind
/// the import — so a request cannot land in data the restore is about to replace, and none
/// hangs for the length of a restore. Reads go on. An import into a scratch target (another
/// database, a prefix) does not hold it. Each store keeps one in its shared state and checks
/// it where its write operations start.
#[derive(Debug, Default)]
pub struct RestoreGate {
    imports: AtomicUsize,
}

impl RestoreGate {
    /// Held until the answer is dropped (imports may overlap: each holds it).
    pub fn hold(&self) -> GateHeld<'_> {
        self.imports.fetch_add(1, Ordering::SeqCst);
        GateHeld(self)
    }

    /// `Err` while an import holds the gate.
    pub fn check(&self) -> Result<(), Restoring> {
        if self.imports.load(Ordering::SeqCst) == 0 {
            Ok(())
        } else {
            Err(Restoring)
        }
    }
}

/// See [`RestoreGate::hold`].
#[derive(Debug)]
pub struct GateHeld<'a>(&'a RestoreGate);

impl Drop for GateHeld<'_> {
    fn drop(&mut self) {
        self.0.imports.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A write refused while a restore writes into the same store (each store's `busy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a restore is writing into this store: writes are refused until it ends; try again then")]
pub struct Restoring;

// ---------------------------------------------------------------------------------------------
// Summary

/// Why an import read an item and did not write it. Low-cardinality, like error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// Must not come back (Redis `redis.not_restorable`: held locks, rate-limit windows).
    NotRestorable,
    /// Its absolute expiry had passed: never resurrected.
    Expired,
    /// Outside what lucid-db owns (a Redis key outside `lucid:*`): not ours to write.
    Foreign,
    /// The store refused this item alone (a corrupt `DUMP` payload); the import went on.
    Refused,
    /// A tar entry whose path would leave the volume (`..`): not unpacked.
    UnsafePath,
}

impl Skip {
    pub fn code(self) -> &'static str {
        match self {
            Skip::NotRestorable => "not_restorable",
            Skip::Expired => "expired",
            Skip::Foreign => "foreign",
            Skip::Refused => "refused",
            Skip::UnsafePath => "unsafe_path",
        }
    }
}

/// What an import did, the same for every store: `read` = `written` + every `skipped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportSummary<D> {
    /// Items taken from the source (keys, documents, NDJSON lines, tar entries).
    pub read: u64,
    /// Items written to the target.
    pub written: u64,
    /// Items read and not written, by reason.
    pub skipped: BTreeMap<Skip, u64>,
    pub elapsed_ms: u64,
    /// What only this store reports.
    pub details: D,
}

impl<D> ImportSummary<D> {
    pub fn new(details: D) -> Self {
        ImportSummary {
            read: 0,
            written: 0,
            skipped: BTreeMap::new(),
            elapsed_ms: 0,
            details,
        }
    }

    pub fn skip(&mut self, why: Skip) {
        *self.skipped.entry(why).or_default() += 1;
    }

    /// How many were skipped for `why`.
    pub fn skipped(&self, why: Skip) -> u64 {
        self.skipped.get(&why).copied().unwrap_or(0)
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Sources

/// An import's source as it travels to the store's actor: boxed, its errors as text (the
/// store reports them redacted, with the count written).
pub type Source<T> = BoxStream<'static, Result<T, String>>;

/// Boxes any source (see the module doc).
pub fn source<S, T, E>(items: S) -> Source<T>
where
    S: Stream<Item = Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    items.map(|item| item.map_err(|e| e.to_string())).boxed()
}

/// How a source stopped short of a full batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEnd {
    /// It ended: everything was read.
    Finished,
    /// It yielded an error: the import fails with the count written.
    Failed(String),
    /// It yielded nothing for the idle timeout: the import fails with `stream_idle`.
    Idle(Duration),
}

/// Items read from a source in one go, and why the batch is short when it is.
#[derive(Debug)]
pub struct Batch<T> {
    pub items: Vec<T>,
    pub end: Option<SourceEnd>,
}

/// Up to `max` items of `source`, waiting at most `idle` for each. Items that are ready are
/// taken without touching a timer (an import reads many thousands).
pub async fn next_batch<S, T>(source: &mut S, max: usize, idle: Duration) -> Batch<T>
where
    S: Stream<Item = Result<T, String>> + Unpin,
{
    let mut items = Vec::with_capacity(max.clamp(1, 1024));
    let end = loop {
        if items.len() >= max.max(1) {
            break None;
        }
        let next = match source.next().now_or_never() {
            Some(next) => next,
            None => match tokio::time::timeout(idle, source.next()).await {
                Ok(next) => next,
                Err(_) => break Some(SourceEnd::Idle(idle)),
            },
        };
        match next {
            Some(Ok(item)) => items.push(item),
            Some(Err(reason)) => break Some(SourceEnd::Failed(reason)),
            None => break Some(SourceEnd::Finished),
        }
    };
    Batch { items, end }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_for_a_target_that_is_there() {
        use Existing::{RefuseAny, RefuseNonEmpty, Replace};
        use TargetState::{Empty, Holding, Missing};
        for (found, rule, admission) in [
            (Missing, RefuseNonEmpty, Admission::Into),
            (Missing, RefuseAny, Admission::Into),
            (Missing, Replace, Admission::Into),
            // Exists but holds nothing: empty, unless the rule refuses anything there.
            (Empty, RefuseNonEmpty, Admission::Into),
            (Empty, RefuseAny, Admission::Exists),
            (Empty, Replace, Admission::Into),
            (Holding, RefuseNonEmpty, Admission::NotEmpty),
            (Holding, RefuseAny, Admission::NotEmpty),
            (Holding, Replace, Admission::Replace),
        ] {
            assert_eq!(rule.admit(found), admission, "{found:?} under {rule:?}");
        }
        assert_eq!(ImportOptions::new(3).existing, RefuseNonEmpty);
    }

    #[test]
    fn the_gate_refuses_while_any_import_holds_it() {
        let gate = RestoreGate::default();
        assert_eq!(gate.check(), Ok(()));
        let first = gate.hold();
        let second = gate.hold();
        assert_eq!(gate.check(), Err(Restoring));
        drop(first);
        assert_eq!(gate.check(), Err(Restoring), "one import still holds it");
        drop(second);
        assert_eq!(gate.check(), Ok(()));
    }

    #[test]
    fn summaries_count_skips_by_reason_and_serialise_them_by_code() {
        let mut s = ImportSummary::new(());
        s.read = 4;
        s.written = 1;
        s.skip(Skip::Expired);
        s.skip(Skip::Expired);
        s.skip(Skip::Foreign);
        assert_eq!((s.skipped(Skip::Expired), s.skipped(Skip::Refused)), (2, 0));
        assert_eq!(s.read, s.written + s.skipped_total());
        let json = serde_json::to_value(&s).expect("json");
        assert_eq!(
            json["skipped"],
            serde_json::json!({"expired": 2, "foreign": 1})
        );
        let back: ImportSummary<()> = serde_json::from_value(json).expect("back");
        assert_eq!(back, s);
        for skip in [
            Skip::NotRestorable,
            Skip::Expired,
            Skip::Foreign,
            Skip::Refused,
            Skip::UnsafePath,
        ] {
            assert_eq!(
                serde_json::to_value(skip).expect("json"),
                serde_json::json!(skip.code())
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_stop_at_the_size_the_end_an_error_or_the_idle_timeout() {
        let idle = Duration::from_secs(30);
        let mut items = source(futures_util::stream::iter(
            (0..5).map(Ok::<u32, String>).chain([Err("cut".to_owned())]),
        ));
        let first = next_batch(&mut items, 3, idle).await;
        assert_eq!((first.items, first.end), (vec![0, 1, 2], None));
        let second = next_batch(&mut items, 3, idle).await;
        assert_eq!(
            (second.items, second.end),
            (vec![3, 4], Some(SourceEnd::Failed("cut".to_owned())))
        );

        let mut done = source(futures_util::stream::iter([Ok::<u32, String>(1)]));
        let batch = next_batch(&mut done, 3, idle).await;
        assert_eq!(
            (batch.items, batch.end),
            (vec![1], Some(SourceEnd::Finished))
        );

        // One item, then silence: the batch ends after the idle timeout, with what it has.
        let mut silent = source(
            futures_util::stream::iter([Ok::<u32, String>(1)])
                .chain(futures_util::stream::pending()),
        );
        let started = tokio::time::Instant::now();
        let batch = next_batch(&mut silent, 3, idle).await;
        assert_eq!(
            (batch.items, batch.end),
            (vec![1], Some(SourceEnd::Idle(idle)))
        );
        assert_eq!(started.elapsed(), idle);
    }
}
