//! Streams a task fills for a reader — a MongoDB cursor, an Elasticsearch scroll, a Redis
//! `SCAN` — bounded, and never ending silently.
//!
//! The task holds a [`Feeder`], the reader a [`Feed`]. The channel between them is bounded, so a
//! slow reader holds the task back instead of growing memory; a reader that takes nothing for
//! the idle timeout ends the feed with the backend's `stream_idle` error. An error ends the feed:
//! it is queued when there is room, and otherwise handed to the reader after the items already
//! queued — so the reader sees every item the task produced, then the error exactly once, and a
//! feed that just stops means the task finished.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

/// The reading end; see the module doc. A `Stream` too.
pub struct Feed<T, E> {
    rx: mpsc::Receiver<Result<T, E>>,
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
            rx,
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

    /// Ends the feed with `e` (see the module doc).
    pub fn fail(self, e: E) {
        if let Err(
            mpsc::error::TrySendError::Full(Err(e)) | mpsc::error::TrySendError::Closed(Err(e)),
        ) = self.tx.try_send(Err(e))
        {
            let _ = self.failed.set(e);
        }
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
        match self.rx.poll_recv(cx) {
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
}
