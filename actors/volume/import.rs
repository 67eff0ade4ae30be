//! Import: a tar stream into a volume, under the one import contract of every store
//! ([`crate::transfer`]; the rules are on [`super::ImportVolume`]). The source is polled on the
//! actor's arbiter ([`forward`]) — it may be another actor's feed or a backup's decoder, which
//! need a runtime — and handed through a bounded channel to the tar reader on a blocking thread
//! ([`import`]), which unpacks into a staging directory beside the volume and swaps it in only
//! once the whole stream is there and flushed.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{
    ImportDetails, ImportOptions, ImportSummary, Settings, VolumeError, VolumeMeta, archive, fsops,
    store,
};
use crate::transfer::{Admission, Skip, Source, TargetState};

/// Hands an import's source to the tar reader, until the source ends or fails or the reader
/// is done (finished, or failed: then the source is dropped unread).
pub(super) async fn forward(
    mut source: Source<Vec<u8>>,
    tx: mpsc::Sender<Result<Vec<u8>, String>>,
) {
    loop {
        let next = tokio::select! {
            next = source.next() => next,
            () = tx.closed() => return,
        };
        let Some(item) = next else {
            return;
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

/// Unpacks `source` into the volume `options` name (created when missing); answers the volume's
/// metadata, the summary, and whether the volume was created.
pub(super) fn import(
    s: &Settings,
    options: &ImportOptions,
    source: archive::Chunks,
) -> Result<(VolumeMeta, ImportSummary, bool), VolumeError> {
    let started = std::time::Instant::now();
    let name = &options.target;
    let _lock = store::lock(s, name, "import", true)?;
    let (meta, created) = match store::fresh_meta(s, name) {
        Ok(meta) => (meta, false),
        Err(VolumeError::NotFound { .. }) => (
            store::create(
                s,
                name,
                s.default_quota,
                name.to_string(),
                BTreeMap::new(),
                false,
            )?,
            true,
        ),
        Err(e) => return Err(e),
    };
    let undo_create = || {
        if created {
            let _ = store::remove_meta(s, name);
            let _ = std::fs::remove_dir_all(store::data_dir(&s.root, &meta));
        }
    };
    let dir = store::data_dir(&s.root, &meta);
    let found = match fsops::check_data_dir(&dir).and_then(|()| fsops::is_empty_dir(&dir)) {
        Ok(_) if created => TargetState::Missing,
        Ok(true) => TargetState::Empty,
        Ok(false) => TargetState::Holding,
        Err(e) => {
            undo_create();
            return Err(e);
        }
    };
    match options.existing.admit(found) {
        Admission::Into | Admission::Replace => {}
        Admission::NotEmpty => {
            return Err(VolumeError::NotEmpty {
                volume: name.to_string(),
            });
        }
        Admission::Exists => {
            return Err(VolumeError::Exists {
                volume: name.to_string(),
            });
        }
    }
    // Unpacked beside the volume (same filesystem), flushed, and swapped in only when the
    // whole stream is there.
    let staging = store::beside(&s.root, &meta, "import");
    let unpacked = std::fs::create_dir(&staging)
        .map_err(|e| VolumeError::io("mkdir", &staging, &e))
        .and_then(|()| {
            archive::import(
                &staging,
                source,
                name.as_str(),
                meta.quota_bytes,
                s.stream_idle,
            )
        })
        .and_then(|unpacked| {
            fsops::sync_filesystem(&staging)?;
            Ok((unpacked, fsops::tally(&staging)?))
        });
    let (unpacked, usage) = match unpacked {
        Ok(done) => done,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            undo_create();
            return Err(e);
        }
    };
    let old = store::beside(&s.root, &meta, "replaced");
    std::fs::rename(&dir, &old).map_err(|e| VolumeError::io("rename", &dir, &e))?;
    if let Err(e) = std::fs::rename(&staging, &dir) {
        // Put the old data back; a crash right here is undone at the next start.
        let _ = std::fs::rename(&old, &dir);
        let _ = std::fs::remove_dir_all(&staging);
        return Err(VolumeError::io("rename", &staging, &e));
    }
    fsops::sync_dir(dir.parent().unwrap_or(&s.root))?;
    // The content changed: the old manifest no longer describes it.
    let _ = std::fs::remove_file(store::manifest_path(&s.root, name));
    let _ = std::fs::remove_dir_all(&old);
    let mut summary = ImportSummary::new(ImportDetails {
        stream_bytes: unpacked.stream_bytes,
        usage,
    });
    summary.read = unpacked.entries;
    summary.written = unpacked.unpacked;
    for _ in 0..unpacked.unsafe_paths {
        summary.skip(Skip::UnsafePath);
    }
    summary.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok((meta, summary, created))
}
