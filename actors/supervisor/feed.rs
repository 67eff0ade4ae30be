//! Streams a task fills for a reader — a MongoDB cursor, an Elasticsearch scroll, a Redis
//! `SCAN`, a volume's tar — bounded, and never ending silently. Every export answers one.
//!
//! The task holds a [`Feeder`], the reader a [`Feed`]. The channel between them is bounded, so a
//! slow reader holds the task back instead of growing memory; a reader that takes nothing for
//! the idle timeout ends the feed with the backend's `stream_idle` error. An error ends the feed:
//! it is queued when there is room, and otherwise handed to the reader after the items already
//! queued — so the reader sees every item the task produced, then the error exactly once, and a
//! feed that just stops means the task finished.
//!
//! A feed may start with items that were ready when it was made ([`Feed::ready`],
//! [`Feed::after`]): a MongoDB find reads its first batch within the call, and a result that
//! fits in it needs no task and no channel at all. A producer on a blocking thread (a tar
//! writer) hands items over with [`Feeder::send_blocking`], which waits on its own clock: the
//! runtime's timers do not run on a blocking thread, and stop when the runtime does. It is
//! parked meanwhile, and woken by the reader taking an item (`block_until`), not polling.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio::sync::mpsc;

/// The reading end; see the module doc. A `Stream` too.
pub struct Feed<T, E> {
    /// Items that were there before the task started (or all there is, without a task).
    ready: VecDeque<Result<T, E>>,
    /// The task's channel; `None` when the ready items are the whole feed.
    rx: Option<mpsc::Receiver<Result<T, E>>>,
    /// The error the task could not queue.
    failed: Arc<OnceLock<E>>,
    reported: bool,
}

/// The writing end; see the module doc.
pub struct Feeder<T, E> {
    tx: mpsc::Sender<Result<T, E>>,
    failed: Arc<OnceLock<E>>,
    idle: Duration,
}

/// Why [`Feeder::send`] did not hand the item over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The reader dropped its end: nobody is left to tell.
    Gone,
    /// The reader took nothing for the idle timeout: end the feed with the backend's idle
    /// error ([`Feeder::fail`]).
    Idle(Duration),
}

/// A feed of at most `capacity` queued items whose reader must take one within `idle`.
pub fn feed<T, E>(capacity: usize, idle: Duration) -> (Feeder<T, E>, Feed<T, E>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let failed = Arc::new(OnceLock::new());
    (
        Feeder {
            tx,
            failed: failed.clone(),
            idle,
        },
        Feed {
            ready: VecDeque::new(),
            rx: Some(rx),
            failed,
            reported: false,
        },
    )
}

impl<T, E> Feeder<T, E> {
    /// Hands one item over, waiting at most the idle timeout for room.
    pub async fn send(&self, item: T) -> Result<(), Stopped> {
        match self.tx.send_timeout(Ok(item), self.idle).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stopped::Gone),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(Stopped::Idle(self.idle)),
        }
    }

    /// As [`Feeder::send`], for a producer on a blocking thread: it waits for room on its own
    /// clock (see the module doc), parked until the reader makes room, at most the idle
    /// timeout.
    pub fn send_blocking(&self, item: T) -> Result<(), Stopped> {
        match block_until(self.idle, self.tx.reserve()) {
            Some(Ok(permit)) => {
                permit.send(Ok(item));
                Ok(())
            }
            Some(Err(_)) => Err(Stopped::Gone),
            None => Err(Stopped::Idle(self.idle)),
        }
    }

    /// Ends the feed with `e` (see the module doc). Never waits, so a blocking producer may
    /// call it too.
    pub fn fail(self, e: E) {
        if let Err(
            mpsc::error::TrySendError::Full(Err(e)) | mpsc::error::TrySendError::Closed(Err(e)),
        ) = self.tx.try_send(Err(e))
        {
            let _ = self.failed.set(e);
        }
    }
}

/// Runs `fut` on this thread until it completes, for at most `idle` on the thread's own clock;
/// `None` when it did not finish in time. The thread is parked between polls and the
/// future's waker unparks it — a channel wakes it when an item or room arrives —, so the wait
/// costs nothing and ends at once, with no pause guessed in between. For blocking threads
/// only: a runtime's own thread must never park.
pub(crate) fn block_until<F: Future>(idle: Duration, fut: F) -> Option<F::Output> {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let deadline = std::time::Instant::now() + idle;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        // Returns on an unpark, at the deadline, or spuriously: the loop polls again.
        std::thread::park_timeout(left);
    }
}

impl<T, E> Feed<T, E> {
    /// A feed of `items` alone: a result that was complete when the call answered.
    pub fn ready(items: impl IntoIterator<Item = Result<T, E>>) -> Self {
        Feed {
            ready: items.into_iter().collect(),
            rx: None,
            failed: Arc::new(OnceLock::new()),
            reported: false,
        }
    }

    /// This feed with `items` in front: what the call read before it handed the rest to a task.
    pub fn after(mut self, items: impl IntoIterator<Item = Result<T, E>>) -> Self {
        let mut ready: VecDeque<_> = items.into_iter().collect();
        ready.append(&mut self.ready);
        self.ready = ready;
        self
    }
}

impl<T, E> Feed<T, E> {
    /// Whether the task feeding this has ended — done, failed, or given up on a reader that
    /// took nothing for the idle timeout: what is queued now is all there will be. A feed of
    /// ready items alone has always ended.
    pub fn finished(&self) -> bool {
        self.rx.as_ref().is_none_or(mpsc::Receiver::is_closed)
    }
}

impl<T, E: Clone> Feed<T, E> {
    /// The next item; `None` once the task has finished and everything was read.
    pub async fn next(&mut self) -> Option<Result<T, E>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// Collects the whole feed, stopping at the first error (for tests and small data; the
    /// point of a feed is not to hold everything).
    pub async fn collect(mut self) -> Result<Vec<T>, E> {
        let mut out = Vec::new();
        while let Some(item) = self.next().await {
            out.push(item?);
        }
        Ok(out)
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<T, E>>> {
        if let Some(item) = self.ready.pop_front() {
            return Poll::Ready(Some(item));
        }
        let Some(rx) = &mut self.rx else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(None) if !self.reported => {
                self.reported = true;
                Poll::Ready(self.failed.get().cloned().map(Err))
            }
            other => other,
        }
    }
}

impl<T, E: Clone> futures_util::Stream for Feed<T, E> {
    type Item = Result<T, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl<T, E> Unpin for Feed<T, E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn items_then_the_error_once_whether_or_not_there_was_room_for_it() {
        // Room: the error is queued behind the items.
        let (tx, mut rx) = feed::<u32, String>(4, Duration::from_secs(1));
        tx.send(1).await.expect("send");
        tx.fail("broken".to_owned());
        assert_eq!(rx.next().await, Some(Ok(1)));
        assert_eq!(rx.next().await, Some(Err("broken".to_owned())));
        assert_eq!(rx.next().await, None);

        // No room: it comes after the queued items all the same.
        let (tx, mut rx) = feed::<u32, String>(1, Duration::from_secs(1));
        tx.send(1).await.expect("send");
        tx.fail("broken".to_owned());
        assert_eq!(rx.next().await, Some(Ok(1)));
        assert_eq!(rx.next().await, Some(Err("broken".to_owned())));
        assert_eq!(rx.next().await, None);

        // Finished without error: the items, then the end.
        let (tx, rx) = feed::<u32, String>(4, Duration::from_secs(1));
        tx.send(7).await.expect("send");
        drop(tx);
        assert_eq!(rx.collect().await, Ok(vec![7]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stalls_stops_the_task_after_the_idle_timeout_and_one_that_leaves_too() {
        let (tx, rx) = feed::<u32, String>(1, Duration::from_millis(300));
        tx.send(1).await.expect("room for one");
        let started = tokio::time::Instant::now();
        assert_eq!(
            tx.send(2).await,
            Err(Stopped::Idle(Duration::from_millis(300)))
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        drop(rx);
        assert_eq!(tx.send(3).await, Err(Stopped::Gone));
    }

    #[tokio::test(start_paused = true)]
    async fn a_feed_knows_when_its_task_has_ended() {
        let (tx, mut rx) = feed::<u32, String>(2, Duration::from_millis(300));
        tx.send(1).await.expect("send");
        assert!(!rx.finished(), "the task still holds its feeder");
        // The task gives up on an idle reader: ended, with the queued items still to read.
        tx.send(2).await.expect("send");
        assert_eq!(
            tx.send(3).await,
            Err(Stopped::Idle(Duration::from_millis(300)))
        );
        tx.fail("idle".to_owned());
        assert!(rx.finished());
        assert_eq!(rx.next().await, Some(Ok(1)));
        assert!(rx.finished());
        assert_eq!(rx.next().await, Some(Ok(2)));
        assert_eq!(rx.next().await, Some(Err("idle".to_owned())));
        assert_eq!(rx.next().await, None);
        // A task that finishes without error, and a feed that never had one.
        let (tx, rx) = feed::<u32, String>(2, Duration::from_millis(300));
        drop(tx);
        assert!(rx.finished());
        assert!(Feed::<u32, String>::ready([Ok(1)]).finished());
    }

    #[tokio::test(start_paused = true)]
    async fn ready_items_come_first_and_a_ready_feed_needs_no_task() {
        let whole = Feed::<u32, String>::ready([Ok(1), Ok(2)]);
        assert_eq!(whole.collect().await, Ok(vec![1, 2]));

        let (tx, rx) = feed::<u32, String>(4, Duration::from_secs(1));
        let mut rx = rx.after([Ok(1), Ok(2)]);
        tx.send(3).await.expect("send");
        tx.fail("broken".to_owned());
        assert_eq!(rx.next().await, Some(Ok(1)));
        assert_eq!(rx.next().await, Some(Ok(2)));
        assert_eq!(rx.next().await, Some(Ok(3)));
        assert_eq!(rx.next().await, Some(Err("broken".to_owned())));
        assert_eq!(rx.next().await, None);

        // A failure read with the first batch is the last item, as from a task.
        let failed = Feed::<u32, String>::ready([Ok(1), Err("lost".to_owned())]);
        assert_eq!(failed.collect().await, Err("lost".to_owned()));
    }

    /// The blocking producer's clock is the thread's own (the runtime's is not there), so this
    /// test runs a short real window.
    #[test]
    fn a_blocking_producer_waits_for_room_at_most_the_idle_timeout() {
        let idle = Duration::from_millis(40);
        // A reader that is there (so the feed is full, not gone) and takes nothing.
        let (tx, _idle_reader) = feed::<u32, String>(1, idle);
        assert_eq!(tx.send_blocking(1), Ok(()));
        let started = std::time::Instant::now();
        assert_eq!(tx.send_blocking(2), Err(Stopped::Idle(idle)));
        assert!(started.elapsed() >= idle, "{:?}", started.elapsed());
        // A reader that takes one makes room within the wait. A generous wait: the reader's
        // thread may start late on a loaded machine, and what is asserted is that the send
        // goes through once there is room, not how soon (the pause only makes it likely that
        // the sender is already waiting).
        let (tx, rx) = feed::<u32, String>(1, Duration::from_secs(30));
        assert_eq!(tx.send_blocking(1), Ok(()));
        let reader = std::thread::spawn(move || {
            let mut rx = rx;
            std::thread::sleep(Duration::from_millis(5));
            let first = rx.rx.as_mut().and_then(|r| r.try_recv().ok());
            (rx, first)
        });
        assert_eq!(tx.send_blocking(3), Ok(()));
        let (rx, first) = reader.join().expect("reader");
        assert_eq!(first, Some(Ok(1)));
        drop(rx);
        assert_eq!(tx.send_blocking(4), Err(Stopped::Gone));
        // Failing from a blocking thread never waits.
        let (tx, rx) = feed::<u32, String>(1, idle);
        assert_eq!(tx.send_blocking(1), Ok(()));
        tx.fail("late".to_owned());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut rx = rx;
        let (first, last) = runtime.block_on(async { (rx.next().await, rx.next().await) });
        assert_eq!((first, last), (Some(Ok(1)), Some(Err("late".to_owned()))));
    }

    /// A blocking wait is woken by the channel, not by polling: a receive that waits for an
    /// item sent later is polled once before it parks and once after the send woke it (a
    /// spurious wake-up may add one), however long the sender takes; one that never completes
    /// gives up at its deadline.
    #[test]
    fn a_blocking_wait_parks_until_woken_and_gives_up_at_its_deadline() {
        struct Counted<F>(F, Arc<std::sync::atomic::AtomicU32>);
        impl<F: Future + Unpin> Future for Counted<F> {
            type Output = F::Output;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Pin::new(&mut self.0).poll(cx)
            }
        }
        let (tx, mut rx) = mpsc::channel::<u32>(1);
        let sender = std::thread::spawn(move || {
            // Most likely sent after the receiver parked; a polling wait (pauses of at most
            // 5 ms) would look dozens of times meanwhile.
            std::thread::sleep(Duration::from_millis(100));
            tx.blocking_send(7).expect("send");
        });
        let polls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let got = block_until(
            Duration::from_secs(30),
            Counted(Box::pin(rx.recv()), polls.clone()),
        );
        sender.join().expect("sender");
        assert_eq!(got, Some(Some(7)));
        // One poll when a loaded machine started this thread after the send.
        let polls = polls.load(std::sync::atomic::Ordering::Relaxed);
        assert!((1..=3).contains(&polls), "polled {polls} times");

        // Never ready: `None` once the deadline has passed on the thread's own clock.
        let idle = Duration::from_millis(30);
        let started = std::time::Instant::now();
        assert_eq!(block_until(idle, std::future::pending::<()>()), None);
        assert!(started.elapsed() >= idle);
    }
}
