//! The quota of the daemon's own writes: the check every such write passes (`make_room`:
//! a [`super::WriteFile`] and a reservation alike), and reservations for writers outside the
//! actor.
//!
//! The backup's artifact writer streams gigabytes into the `backups` volume through its own
//! file handles (opendal's fs service rooted at the volume's directory), so it cannot go
//! through [`super::WriteFile`], which holds a whole file in memory and is for small files
//! only.
//!
//! [`ReserveQuota`] promises a writer `bytes` of a volume's quota up front — refused at once
//! when the volume's use plus every other promise in flight would pass the quota, so a backup
//! that cannot fit fails before it writes anything rather than half-way. The [`Reservation`] it
//! answers holds the volume's lock shared (a migrate, import or delete cannot move the data
//! away under the writer), counts what the writer writes through [`Reservation::charge`] or a
//! [`ReservedWriter`], and stops the writer with [`VolumeError::OverReservation`] at the first
//! byte past the promise. Dropping it gives back what was not used at once (the book is shared
//! with the actor, not a message that a full mailbox could lose) and tells the actor what was
//! written, so its usage figures stay current without a walk.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use actix::prelude::*;

use super::fsops::{self, LockFile};
use super::{Settings, Usage, VolumeActor, VolumeError, VolumeMeta, VolumeName, store};

// ---------------------------------------------------------------------------------------------
// Messages

/// Reserves `bytes` of volume `name`'s quota for a writer; see the module doc.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Reservation, VolumeError>")]
pub struct ReserveQuota {
    pub name: VolumeName,
    pub bytes: u64,
}

/// A reservation ended: `written` bytes landed in the volume (internal; sent on drop).
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Released {
    name: VolumeName,
    written: u64,
}

// ---------------------------------------------------------------------------------------------
// The book

/// Bytes promised per volume to writers in flight; shared between the actor and every
/// [`Reservation`].
#[derive(Debug, Clone, Default)]
pub(super) struct Book(Arc<Mutex<HashMap<VolumeName, u64>>>);

impl Book {
    /// Adds `bytes` to `name`'s promises; answers what was promised before.
    pub(super) fn add(&self, name: &VolumeName, bytes: u64) -> u64 {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map.entry(name.clone()).or_default();
        let before = *entry;
        *entry = before.saturating_add(bytes);
        before
    }

    /// Takes `bytes` back from `name`'s promises.
    pub(super) fn sub(&self, name: &VolumeName, bytes: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(name) {
            *entry = entry.saturating_sub(bytes);
            if *entry == 0 {
                map.remove(name);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reservation

/// Bytes of a volume's quota promised to one writer; see the module doc.
pub struct Reservation {
    volume: VolumeName,
    data_dir: PathBuf,
    granted: u64,
    used: AtomicU64,
    book: Book,
    actor: Addr<VolumeActor>,
    _lock: LockFile,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("volume", &self.volume)
            .field("data_dir", &self.data_dir)
            .field("granted", &self.granted)
            .field("used", &self.used())
            .finish_non_exhaustive()
    }
}

impl Reservation {
    pub fn volume(&self) -> &VolumeName {
        &self.volume
    }

    /// The volume's data directory: where the writer roots its files.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The bytes promised.
    pub fn granted(&self) -> u64 {
        self.granted
    }

    /// The bytes written so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more as written; refuses (and counts nothing) when that would pass the
    /// reservation. Call it before the bytes are written.
    pub fn charge(&self, bytes: u64) -> Result<(), VolumeError> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.granted)
            })
            .map(|_| ())
            .map_err(|used| VolumeError::OverReservation {
                volume: self.volume.to_string(),
                reserved: self.granted,
                wanted: used.saturating_add(bytes),
            })
    }

    /// Wraps `inner` so every byte written through it is charged first.
    pub fn writer<W: Write>(&self, inner: W) -> ReservedWriter<'_, W> {
        ReservedWriter {
            inner,
            reservation: self,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.book.sub(&self.volume, self.granted);
        // Best effort: a full mailbox only leaves usage stale until the next walk
        // (`volumes.usage_max_age`); the quota book above is already right.
        let _ = self.actor.try_send(Released {
            name: self.volume.clone(),
            written: self.used(),
        });
    }
}

/// A writer that charges a [`Reservation`] before each write; past it, the write fails with
/// [`VolumeError::OverReservation`] (as an `io::Error` of kind `Other`, its source the volume
/// error) and nothing of that buffer is written.
pub struct ReservedWriter<'a, W> {
    inner: W,
    reservation: &'a Reservation,
}

impl<W> ReservedWriter<'_, W> {
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for ReservedWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.reservation
            .charge(buf.len() as u64)
            .map_err(std::io::Error::other)?;
        match self.inner.write(buf) {
            Ok(n) => {
                // Only what was written stays charged.
                let unwritten = (buf.len() - n) as u64;
                self.reservation
                    .used
                    .fetch_sub(unwritten, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.reservation
                    .used
                    .fetch_sub(buf.len() as u64, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// The quota check

/// What [`make_room`] found, held while the writer writes.
pub(super) struct Room {
    /// The volume's lock, shared: a migrate, import or delete (exclusive) cannot move the data
    /// away under the writer.
    pub lock: LockFile,
    pub found: Found,
    pub dir: PathBuf,
}

/// The metadata and usage a [`Room`] found, for the actor to take in ([`VolumeActor::take_in`]).
pub(super) struct Found {
    meta: VolumeMeta,
    usage: Usage,
    /// Whether `usage` was measured now (not the cached figure).
    walked: bool,
}

/// The quota check of every write the daemon makes itself ([`WriteFile`], a
/// [`Reservation`]), on a blocking thread: the volume's lock shared, its metadata
/// re-read, its usage (`cached` while it is for the same quota, else measured now), and room
/// for `needed` bytes beside the `promised` ones of other writers in flight.
pub(super) fn make_room(
    s: &Settings,
    name: &VolumeName,
    operation: &'static str,
    cached: Option<Usage>,
    promised: u64,
    needed: u64,
) -> Result<Room, VolumeError> {
    let lock = store::lock(s, name, operation, false)?;
    let meta = store::fresh_meta(s, name)?;
    let (usage, walked) = match cached {
        Some(u) if u.quota_bytes == meta.quota_bytes => (u, false),
        _ => (store::measure(s, &meta)?, true),
    };
    if usage.tally.bytes + promised + needed > meta.quota_bytes {
        return Err(VolumeError::OverQuota {
            volume: name.to_string(),
            used: usage.tally.bytes + promised,
            quota: meta.quota_bytes,
            needed,
        });
    }
    let dir = store::data_dir(&s.root, &meta);
    fsops::check_data_dir(&dir)?;
    Ok(Room {
        lock,
        found: Found {
            meta,
            usage,
            walked,
        },
        dir,
    })
}

impl VolumeActor {
    /// Takes in what a write's quota check ([`make_room`]) found on disk.
    pub(super) fn take_in(&mut self, name: &VolumeName, found: Found) {
        self.remember(&found.meta);
        if found.walked {
            self.record_walk(name, found.usage);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers

impl Handler<ReserveQuota> for VolumeActor {
    type Result = super::Reply<Reservation>;

    fn handle(&mut self, msg: ReserveQuota, ctx: &mut Context<Self>) -> Self::Result {
        let check = self.known(&msg.name).and_then(|()| {
            if msg.bytes == 0 {
                return Err(VolumeError::Invalid {
                    field: "bytes",
                    reason: "a reservation must be at least one byte".to_owned(),
                });
            }
            Ok(())
        });
        // Promised now, before the check: reservations asked for together cannot all pass
        // one quota.
        let before = match check {
            Ok(()) => self.reserved.add(&msg.name, msg.bytes),
            Err(_) => 0,
        };
        let cached = self.fresh_usage(&msg.name);
        let (name, needed) = (msg.name, msg.bytes);
        let actor = ctx.address();
        self.on_disk(
            check,
            {
                let name = name.clone();
                move |s| make_room(s, &name, "reserve", cached, before, needed)
            },
            move |act, res| {
                let room = match res {
                    Ok(room) => room,
                    Err(e) => {
                        act.reserved.sub(&name, needed);
                        return Err(e);
                    }
                };
                act.take_in(&name, room.found);
                Ok(Reservation {
                    volume: name,
                    data_dir: room.dir,
                    granted: needed,
                    used: AtomicU64::new(0),
                    book: act.reserved.clone(),
                    actor,
                    _lock: room.lock,
                })
            },
        )
    }
}

impl Handler<Released> for VolumeActor {
    type Result = ();

    fn handle(&mut self, msg: Released, _: &mut Context<Self>) {
        self.add_usage(&msg.name, msg.written as i64, msg.written as i64, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_book_adds_and_gives_back() {
        let book = Book::default();
        let name = VolumeName::new("backups").expect("name");
        assert_eq!(book.add(&name, 10), 0);
        assert_eq!(book.add(&name, 5), 10);
        book.sub(&name, 10);
        assert_eq!(book.add(&name, 0), 5);
        book.sub(&name, 50);
        assert_eq!(book.add(&name, 0), 0, "never below zero");
    }
}
