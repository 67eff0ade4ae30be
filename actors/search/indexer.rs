//! The bulk indexer: single documents in, bulk requests out.
//!
//! A caller hands over one document at a time ([`super::SearchHandle::submit`] waits for
//! room, [`super::SearchHandle::try_submit`] answers `busy` at once) and gets that document's
//! own outcome back: where it went, or exactly why the server refused it. The document is
//! checked, routed and encoded before it is queued, so bad input is refused at once and
//! never occupies the queue.
//!
//! A background task gathers the queued documents into bulk requests and sends one when it
//! holds `bulk_max_docs` documents, when the next document would take it past
//! `bulk_max_bytes`, or when its first document has waited `bulk_flush_interval`, whichever
//! comes first. At most `bulk_in_flight` requests are out at once; while they all are, the
//! task takes nothing more from the queue.
//!
//! **Memory is bounded**, in bytes and in documents: before a document is queued its caller
//! reserves its size from a budget of (`bulk_in_flight` + 1) × `bulk_max_bytes`, given back
//! when the document's outcome is known, and a place in the queue, a bounded channel of
//! `bulk_max_docs` places (the budget alone would let a flood of tiny documents queue by the
//! hundred thousand, each with its reply channel). A full budget or a full queue is the
//! backpressure: `submit` waits for room (at most the call deadline for both, then `busy`);
//! `try_submit` answers `busy` at once. Refusals are counted ([`IndexerStats::busy`]), not
//! logged one by one.
//!
//! [`Indexer::flush`] sends what is queued now and waits until everything sent before has its
//! outcome; the daemon flushes before it stops, so queued documents are not dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::time::Instant;

use super::documents::{IndexReply, Outcome, Prepared};
use super::{BACKEND, SearchError};
use crate::supervisor::CallError;

/// How the indexer batches; from `[elasticsearch]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_docs: usize,
    pub max_bytes: usize,
    pub in_flight: usize,
    pub flush_interval: Duration,
}

impl Limits {
    /// Bytes of documents the indexer holds at most: queued and in flight.
    pub fn budget(&self) -> usize {
        // A semaphore holds at most `usize::MAX >> 3` permits.
        self.max_bytes
            .saturating_mul(self.in_flight + 1)
            .min(Semaphore::MAX_PERMITS)
    }

    /// Documents waiting for the batching task at most: one batch's worth. With the batches in
    /// flight and the one being gathered, the indexer holds at most (`bulk_in_flight` + 2) ×
    /// `bulk_max_docs` documents, however small.
    pub fn queue(&self) -> usize {
        self.max_docs.max(1)
    }
}

/// What the indexer has done, read in process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IndexerStats {
    /// Bytes of documents queued or in flight now.
    pub held_bytes: u64,
    /// The most it may hold: (`bulk_in_flight` + 1) × `bulk_max_bytes`.
    pub budget_bytes: u64,
    /// Documents in the queue now, not yet taken into a batch.
    pub queued: u64,
    /// The queue's places: `bulk_max_docs`.
    pub queue_capacity: u64,
    /// Documents taken and answered since start.
    pub submitted: u64,
    pub answered: u64,
    /// Batches handed to the sender (one or more bulk requests each, with retries).
    pub batches: u64,
    /// Submissions refused because the budget or the queue stayed full.
    pub busy: u64,
}

#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    answered: AtomicU64,
    batches: AtomicU64,
    busy: AtomicU64,
}

struct Queued {
    doc: Prepared,
    reply: oneshot::Sender<Result<IndexReply, SearchError>>,
    /// The document's share of the budget, given back with its outcome.
    room: OwnedSemaphorePermit,
}

enum Command {
    Doc(Queued),
    Flush(oneshot::Sender<()>),
}

/// The queue's sending side; see the module doc. Cheap to clone.
#[derive(Clone)]
pub struct Indexer {
    tx: mpsc::Sender<Command>,
    room: Arc<Semaphore>,
    limits: Limits,
    counters: Arc<Counters>,
}

impl Indexer {
    /// The queue and its batching task, for the caller to spawn where the store's work runs
    /// (the search actor's own thread). `send` sends one batch (the documents' `pos` is their
    /// place in it) and answers each document's outcome.
    pub(crate) fn new<S, F>(
        limits: Limits,
        send: S,
    ) -> (Indexer, impl Future<Output = ()> + Send + 'static)
    where
        S: Fn(Vec<Prepared>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<Outcome>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(limits.queue());
        let counters = Arc::new(Counters::default());
        let batching = run(rx, limits, send, counters.clone());
        let indexer = Indexer {
            tx,
            room: Arc::new(Semaphore::new(limits.budget())),
            limits,
            counters,
        };
        (indexer, batching)
    }

    /// [`Indexer::new`] with the batching task on the current tokio runtime.
    #[cfg(test)]
    fn start<S, F>(limits: Limits, send: S) -> Indexer
    where
        S: Fn(Vec<Prepared>) -> F + Send + Sync + 'static,
        F: Future<Output = Vec<Outcome>> + Send + 'static,
    {
        let (indexer, batching) = Indexer::new(limits, send);
        tokio::spawn(batching);
        indexer
    }

    /// Queues a document, waiting at most `wait` for room in the budget and the queue;
    /// answers its outcome.
    pub(crate) async fn submit(
        &self,
        doc: Prepared,
        wait: Duration,
    ) -> Result<IndexReply, SearchError> {
        let until = Instant::now() + wait;
        let need = self.need(&doc);
        let room = match tokio::time::timeout_at(until, self.room.clone().acquire_many_owned(need))
            .await
        {
            Ok(Ok(room)) => room,
            Ok(Err(_)) => return Err(stopped()),
            Err(_) => return Err(self.busy()),
        };
        let place = match tokio::time::timeout_at(until, self.tx.reserve()).await {
            Ok(Ok(place)) => place,
            Ok(Err(_)) => return Err(stopped()),
            Err(_) => return Err(self.busy()),
        };
        self.enqueue(place, doc, room).await
    }

    /// Queues a document if there is room in the budget and the queue now, else `busy`;
    /// answers its outcome.
    pub(crate) async fn try_submit(&self, doc: Prepared) -> Result<IndexReply, SearchError> {
        let need = self.need(&doc);
        let room = match self.room.clone().try_acquire_many_owned(need) {
            Ok(room) => room,
            Err(TryAcquireError::NoPermits) => return Err(self.busy()),
            Err(TryAcquireError::Closed) => return Err(stopped()),
        };
        let place = match self.tx.try_reserve() {
            Ok(place) => place,
            Err(mpsc::error::TrySendError::Full(())) => return Err(self.busy()),
            Err(mpsc::error::TrySendError::Closed(())) => return Err(stopped()),
        };
        self.enqueue(place, doc, room).await
    }

    /// Sends what is queued now and waits until everything sent before has its outcome. (It
    /// waits for a place in the queue like a document, however long: the batching task is
    /// emptying it.)
    pub async fn flush(&self) -> Result<(), SearchError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    pub fn stats(&self) -> IndexerStats {
        let budget = self.limits.budget();
        IndexerStats {
            held_bytes: budget.saturating_sub(self.room.available_permits()) as u64,
            budget_bytes: budget as u64,
            queued: self.tx.max_capacity().saturating_sub(self.tx.capacity()) as u64,
            queue_capacity: self.tx.max_capacity() as u64,
            submitted: self.counters.submitted.load(Ordering::Relaxed),
            answered: self.counters.answered.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            busy: self.counters.busy.load(Ordering::Relaxed),
        }
    }

    /// A document's share of the budget (never more than the whole budget, so one large
    /// document cannot wait forever).
    fn need(&self, doc: &Prepared) -> u32 {
        let need = doc.size().min(self.limits.budget());
        u32::try_from(need).unwrap_or(u32::MAX)
    }

    fn busy(&self) -> SearchError {
        self.counters.busy.fetch_add(1, Ordering::Relaxed);
        SearchError::Busy {
            budget_bytes: self.limits.budget() as u64,
            queue_docs: self.limits.queue() as u64,
        }
    }

    async fn enqueue(
        &self,
        place: mpsc::Permit<'_, Command>,
        doc: Prepared,
        room: OwnedSemaphorePermit,
    ) -> Result<IndexReply, SearchError> {
        let (reply, answer) = oneshot::channel();
        place.send(Command::Doc(Queued { doc, reply, room }));
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> SearchError {
    SearchError::Call(CallError::NotDelivered {
        backend: BACKEND,
        reason: "the bulk indexer has stopped",
    })
}

/// The batching task: gathers documents, sends a batch when it is full or due, and never has
/// more than `in_flight` batches out.
async fn run<S, F>(
    mut rx: mpsc::Receiver<Command>,
    limits: Limits,
    send: S,
    counters: Arc<Counters>,
) where
    S: Fn(Vec<Prepared>) -> F,
    F: Future<Output = Vec<Outcome>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    let mut batch = Batch::default();
    // One timer, moved when a batch starts: not a new one for every document.
    let timer = tokio::time::sleep(limits.flush_interval);
    tokio::pin!(timer);
    loop {
        let command = tokio::select! {
            biased;
            command = rx.recv() => command,
            () = &mut timer, if !batch.docs.is_empty() => {
                batch.send(&slots, &send, &counters).await;
                continue;
            }
        };
        match command {
            Some(Command::Doc(q)) => {
                let size = q.doc.size();
                if !batch.docs.is_empty() && batch.bytes + size > limits.max_bytes {
                    batch.send(&slots, &send, &counters).await;
                }
                if batch.docs.is_empty() {
                    timer.as_mut().reset(Instant::now() + limits.flush_interval);
                }
                batch.bytes += size;
                batch.docs.push(q);
                if batch.docs.len() >= limits.max_docs {
                    batch.send(&slots, &send, &counters).await;
                }
            }
            Some(Command::Flush(done)) => {
                batch.send(&slots, &send, &counters).await;
                // Every slot free again: everything sent before has its outcome.
                let all = u32::try_from(limits.in_flight).unwrap_or(u32::MAX);
                if let Ok(all) = slots.acquire_many(all).await {
                    drop(all);
                }
                let _ = done.send(());
            }
            None => {
                // Every handle is gone: send what is left and let it finish.
                batch.send(&slots, &send, &counters).await;
                return;
            }
        }
    }
}

/// The documents gathered for the next request. The timer runs while it is not empty.
#[derive(Default)]
struct Batch {
    docs: Vec<Queued>,
    bytes: usize,
}

impl Batch {
    /// Waits for a free slot, then sends the batch in a task of its own that answers every
    /// caller and frees the slot.
    async fn send<S, F>(&mut self, slots: &Arc<Semaphore>, send: &S, counters: &Arc<Counters>)
    where
        S: Fn(Vec<Prepared>) -> F,
        F: Future<Output = Vec<Outcome>> + Send + 'static,
    {
        self.bytes = 0;
        if self.docs.is_empty() {
            return;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut callers = Vec::with_capacity(self.docs.len());
        let mut docs = Vec::with_capacity(self.docs.len());
        for (pos, mut q) in std::mem::take(&mut self.docs).into_iter().enumerate() {
            q.doc.pos = pos;
            docs.push(q.doc);
            callers.push(Some((q.reply, q.room)));
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let sending = send(docs);
        let counters = counters.clone();
        tokio::spawn(async move {
            let outcomes = sending.await;
            // The room is given back before the caller hears its outcome: the caller may be on
            // another thread, and must find the budget free once it has its answer.
            for (pos, outcome) in outcomes {
                if let Some((reply, room)) = callers.get_mut(pos).and_then(Option::take) {
                    counters.answered.fetch_add(1, Ordering::Relaxed);
                    drop(room);
                    let _ = reply.send(outcome);
                }
            }
            for (reply, room) in callers.into_iter().flatten() {
                counters.answered.fetch_add(1, Ordering::Relaxed);
                drop(room);
                let _ = reply.send(Err(SearchError::Codec {
                    message: "the bulk answer had no item for this document".to_owned(),
                }));
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    //! The batching logic on paused time, with a sender that records what it is given and
    //! answers without a server; the indexer against a real server is in
    //! `tests/it/search_service.rs`.

    use std::sync::Mutex;

    use super::*;

    /// Sources of 72 bytes: 200 bytes against the budget with the action line.
    const SIZE: usize = 200;

    fn doc(id: &str) -> Prepared {
        Prepared::for_test(id, SIZE - 128)
    }

    fn limits(max_docs: usize, max_bytes: usize, in_flight: usize) -> Limits {
        Limits {
            max_docs,
            max_bytes,
            in_flight,
            flush_interval: Duration::from_secs(1),
        }
    }

    /// Each batch the sender was given: when (since `t0`) and the ids in it.
    type Sent = Arc<Mutex<Vec<(Duration, Vec<String>)>>>;

    /// An indexer whose sender records each batch, waits for a permit of `gate` when given,
    /// and answers every document: refused (400) when its id starts with "bad", else indexed.
    /// The answers come in reverse order, as a server may not keep it.
    fn indexer(limits: Limits, gate: Option<Arc<Semaphore>>) -> (Indexer, Sent, Instant) {
        let sent: Sent = Arc::default();
        let t0 = Instant::now();
        let record = sent.clone();
        let ix = Indexer::start(limits, move |batch: Vec<Prepared>| {
            let ids: Vec<String> = batch.iter().map(|d| d.id().to_owned()).collect();
            record
                .lock()
                .expect("record")
                .push((t0.elapsed(), ids.clone()));
            let gate = gate.clone();
            let positions: Vec<usize> = batch.iter().map(|d| d.pos).collect();
            async move {
                if let Some(gate) = gate {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                positions
                    .into_iter()
                    .zip(ids)
                    .rev()
                    .map(|(pos, id)| {
                        let outcome = if id.starts_with("bad") {
                            Err(SearchError::Server {
                                status: 400,
                                kind: "mapper_parsing_exception".to_owned(),
                                reason: format!("failed to parse {id}"),
                            })
                        } else {
                            Ok(IndexReply {
                                index: "lucid-sessions-2026.11".to_owned(),
                                id,
                                late: false,
                                created: true,
                            })
                        };
                        (pos, outcome)
                    })
                    .collect()
            }
        });
        (ix, sent, t0)
    }

    fn spawn_submit(
        ix: &Indexer,
        id: &str,
        wait: Duration,
    ) -> tokio::task::JoinHandle<Result<IndexReply, SearchError>> {
        let ix = ix.clone();
        let doc = doc(id);
        tokio::spawn(async move { ix.submit(doc, wait).await })
    }

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_goes_when_its_first_document_has_waited_the_interval() {
        let (ix, sent, _) = indexer(limits(100, 1 << 20, 2), None);
        let a = spawn_submit(&ix, "a", Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            sent.lock().expect("sent").is_empty(),
            "sent before it was due"
        );
        let b = spawn_submit(&ix, "b", Duration::from_secs(5));
        let (a, b) = (a.await.expect("a"), b.await.expect("b"));
        assert_eq!(a.expect("a indexed").id, "a");
        assert_eq!(b.expect("b indexed").id, "b");
        // One batch, one interval after the first document — not after the second.
        assert_eq!(
            *sent.lock().expect("sent"),
            vec![(Duration::from_secs(1), ids(&["a", "b"]))]
        );
        // The next document starts a new interval.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let c = spawn_submit(&ix, "c", Duration::from_secs(5));
        c.await.expect("c").expect("c indexed");
        let sent = sent.lock().expect("sent");
        assert_eq!(sent[1], (Duration::from_millis(4500), ids(&["c"])));
    }

    #[tokio::test(start_paused = true)]
    async fn full_batches_go_at_once_by_count_and_by_bytes() {
        // By count: 3 a batch.
        let (ix, sent, _) = indexer(limits(3, 1 << 20, 4), None);
        let names = ["d0", "d1", "d2", "d3", "d4", "d5", "d6"];
        let mut waiting = Vec::new();
        for n in names {
            waiting.push(spawn_submit(&ix, n, Duration::from_secs(5)));
            tokio::task::yield_now().await;
        }
        for w in waiting {
            w.await.expect("join").expect("indexed");
        }
        assert_eq!(
            *sent.lock().expect("sent"),
            vec![
                (Duration::ZERO, ids(&["d0", "d1", "d2"])),
                (Duration::ZERO, ids(&["d3", "d4", "d5"])),
                (Duration::from_secs(1), ids(&["d6"])),
            ]
        );

        // By bytes: 500 bytes hold two documents of 200.
        let (ix, sent, _) = indexer(limits(100, 500, 4), None);
        let mut waiting = Vec::new();
        for n in ["e0", "e1", "e2", "e3", "e4"] {
            waiting.push(spawn_submit(&ix, n, Duration::from_secs(5)));
            tokio::task::yield_now().await;
        }
        ix.flush().await.expect("flush");
        for w in waiting {
            w.await.expect("join").expect("indexed");
        }
        assert_eq!(
            *sent.lock().expect("sent"),
            vec![
                (Duration::ZERO, ids(&["e0", "e1"])),
                (Duration::ZERO, ids(&["e2", "e3"])),
                (Duration::ZERO, ids(&["e4"])),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_caller_gets_its_own_documents_outcome() {
        let (ix, _, _) = indexer(limits(10, 1 << 20, 2), None);
        let names = ["ok0", "bad1", "ok2", "bad3", "ok4", "ok5"];
        let waiting: Vec<_> = names
            .iter()
            .map(|n| spawn_submit(&ix, n, Duration::from_secs(5)))
            .collect();
        for (n, w) in names.iter().zip(waiting) {
            match w.await.expect("join") {
                Ok(reply) => {
                    assert!(n.starts_with("ok"), "{n} indexed");
                    assert_eq!(reply.id, *n);
                }
                Err(SearchError::Server { status, reason, .. }) => {
                    assert!(n.starts_with("bad"), "{n} refused");
                    assert_eq!(status, 400);
                    assert_eq!(reason, format!("failed to parse {n}"));
                }
                Err(other) => panic!("{n}: {other}"),
            }
        }
        let stats = ix.stats();
        assert_eq!((stats.submitted, stats.answered, stats.batches), (6, 6, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_what_is_held_and_callers_wait_or_get_busy() {
        // One batch in flight, two documents a batch: the budget is 2 × 400 = 4 documents.
        let gate = Arc::new(Semaphore::new(0));
        let (ix, sent, _) = indexer(limits(2, 400, 1), Some(gate.clone()));
        assert_eq!(ix.stats().budget_bytes, 800);
        let mut waiting = Vec::new();
        for n in ["f0", "f1", "f2", "f3"] {
            waiting.push(spawn_submit(&ix, n, Duration::from_secs(60)));
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // f0 and f1 are in flight (held by the gate), f2 and f3 queued behind them.
        assert_eq!(sent.lock().expect("sent").len(), 1);
        assert_eq!(ix.stats().held_bytes, 800);

        // Full: try_submit answers busy at once, submit after its wait.
        let refused = ix.try_submit(doc("f4")).await;
        assert!(
            matches!(
                refused,
                Err(SearchError::Busy {
                    budget_bytes: 800,
                    ..
                })
            ),
            "{refused:?}"
        );
        let started = Instant::now();
        let refused = ix.submit(doc("f5"), Duration::from_millis(300)).await;
        assert!(
            matches!(refused, Err(SearchError::Busy { .. })),
            "{refused:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(ix.stats().busy, 2);
        assert_eq!(
            ix.stats().held_bytes,
            800,
            "a refused document takes no room"
        );

        // A patient caller gets in once the server answers.
        let patient = spawn_submit(&ix, "f6", Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!patient.is_finished());
        gate.add_permits(10);
        for w in waiting {
            w.await.expect("join").expect("indexed");
        }
        patient.await.expect("join").expect("f6 indexed");
        ix.flush().await.expect("flush");
        assert_eq!(ix.stats().held_bytes, 0);
        let batches: Vec<Vec<String>> = sent
            .lock()
            .expect("sent")
            .iter()
            .map(|(_, ids)| ids.clone())
            .collect();
        assert_eq!(
            batches,
            vec![ids(&["f0", "f1"]), ids(&["f2", "f3"]), ids(&["f6"])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_bounds_how_many_documents_wait_and_callers_wait_or_get_busy() {
        // Two documents a batch and one batch in flight, with a budget far from full: only
        // the queue (two places) holds documents back.
        let gate = Arc::new(Semaphore::new(0));
        let (ix, sent, _) = indexer(limits(2, 1 << 20, 1), Some(gate.clone()));
        assert_eq!(ix.stats().queue_capacity, 2);
        let mut waiting = Vec::new();
        for n in ["g0", "g1", "g2", "g3", "g4", "g5"] {
            waiting.push(spawn_submit(&ix, n, Duration::from_secs(60)));
            // Every task runs until it waits (paused time moves on only then).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // g0 and g1 in flight (held by the gate), g2 and g3 the next batch, waiting for the
        // slot; g4 and g5 fill the queue.
        assert_eq!(ids_sent(&sent), vec![ids(&["g0", "g1"])]);
        let stats = ix.stats();
        assert_eq!(stats.queued, 2, "{stats:?}");
        assert_eq!(stats.held_bytes, 6 * SIZE as u64, "{stats:?}");
        assert!(stats.held_bytes < stats.budget_bytes / 100, "{stats:?}");

        // The queue is full, the budget is not: try_submit answers busy at once, submit
        // after its wait, and neither takes any of the budget.
        let refused = ix.try_submit(doc("g6")).await;
        assert!(
            matches!(refused, Err(SearchError::Busy { queue_docs: 2, .. })),
            "{refused:?}"
        );
        let started = Instant::now();
        let refused = ix.submit(doc("g7"), Duration::from_millis(300)).await;
        assert!(
            matches!(refused, Err(SearchError::Busy { .. })),
            "{refused:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(ix.stats().busy, 2);
        assert_eq!(ix.stats().held_bytes, 6 * SIZE as u64);

        // A patient caller gets a place once the server answers and the queue moves.
        let patient = spawn_submit(&ix, "g8", Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!patient.is_finished());
        gate.add_permits(10);
        for w in waiting {
            w.await.expect("join").expect("indexed");
        }
        patient.await.expect("join").expect("g8 indexed");
        ix.flush().await.expect("flush");
        let stats = ix.stats();
        assert_eq!((stats.queued, stats.held_bytes), (0, 0), "{stats:?}");
        assert_eq!(
            ids_sent(&sent),
            vec![
                ids(&["g0", "g1"]),
                ids(&["g2", "g3"]),
                ids(&["g4", "g5"]),
                ids(&["g8"])
            ]
        );
    }

    /// The ids of each batch sent, in order.
    fn ids_sent(sent: &Sent) -> Vec<Vec<String>> {
        sent.lock()
            .expect("sent")
            .iter()
            .map(|(_, ids)| ids.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn flush_sends_at_once_and_returns_when_every_outcome_is_known() {
        let gate = Arc::new(Semaphore::new(0));
        let (ix, sent, t0) = indexer(
            Limits {
                flush_interval: Duration::from_secs(60),
                ..limits(100, 1 << 20, 2)
            },
            Some(gate.clone()),
        );
        let a = spawn_submit(&ix, "a", Duration::from_secs(5));
        tokio::task::yield_now().await;
        let flushing = {
            let ix = ix.clone();
            tokio::spawn(async move { ix.flush().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Sent at once, not after the 60 s interval; the flush waits for its answer.
        assert_eq!(
            *sent.lock().expect("sent"),
            vec![(Duration::ZERO, ids(&["a"]))]
        );
        assert!(!flushing.is_finished());
        gate.add_permits(1);
        flushing.await.expect("join").expect("flush");
        a.await.expect("join").expect("indexed");
        assert!(t0.elapsed() < Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_document_missing_from_the_answer_is_answered_with_an_error() {
        let ix = Indexer::start(limits(10, 1 << 20, 1), |_batch: Vec<Prepared>| async {
            Vec::<Outcome>::new()
        });
        let answer = ix.submit(doc("x"), Duration::from_secs(1)).await;
        assert!(
            matches!(answer, Err(SearchError::Codec { .. })),
            "{answer:?}"
        );
        assert_eq!(ix.stats().held_bytes, 0);
    }
}
