//! I/O figures per volume: the block device that holds it (its mount in
//! `/proc/self/mountinfo`, the device in `/sys/dev/block/MAJ:MIN` — readable under the unit's
//! `ProcSubset=pid`, which hides `/proc/diskstats`), its read and write bytes and operations
//! per second and busy time from `/sys/dev/block/MAJ:MIN/stat` over a sampling interval, and a
//! latency probe (a 4 KiB write and fsync in the volume) whose p50 and p99 over the recent
//! probes show a card that is dying before it loses data: slow writes come first.
//!
//! Where no device can be found (tmpfs, overlay, a `/sys` that cannot be read), the figures say
//! so — `device: None` with the reason — instead of guessing. The device figures are the
//! whole device's, not the volume's alone: every volume on one card shows the same.
//!
//! [`VolumeStats`] answers the figures, and each sample is put on `/metrics` (the scheduler's
//! `volume_usage` job takes one, so they stay fresh without a scrape waiting on a sample);
//! `volume.slow_io` fires once when a volume's probe p99 crosses `volumes.slow_io_threshold`,
//! re-armed only when it is back under three quarters of it.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::{VolumeActor, VolumeError, VolumeName, VolumeOp, events, fsops, store};

/// Probes kept per volume for the percentiles.
pub const PROBES_KEPT: usize = 32;

/// The figures of one volume (or of every volume), sampled over `interval` (at most 1 s).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<Vec<IoStats>, VolumeError>")]
pub struct VolumeStats {
    pub name: Option<VolumeName>,
    pub interval: Duration,
}

impl VolumeOp for VolumeStats {
    type Output = Vec<IoStats>;
    const LONG: bool = true;
}

/// A block device's counters (`/sys/dev/block/MAJ:MIN/stat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    reads: u64,
    read_sectors: u64,
    writes: u64,
    write_sectors: u64,
    /// Milliseconds the device had I/O in flight.
    busy_ms: u64,
}

/// The device a volume is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// `MAJ:MIN`.
    pub id: String,
    /// `mmcblk0p2`, `sda1`, `loop0`.
    pub name: String,
    pub fs_type: String,
    pub mount_point: PathBuf,
}

/// A volume's I/O figures; `None` where they are unavailable (`unavailable` says why).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoStats {
    pub volume: VolumeName,
    pub device: Option<Device>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub interval_ms: u64,
    pub read_bytes_per_s: Option<f64>,
    pub write_bytes_per_s: Option<f64>,
    pub reads_per_s: Option<f64>,
    pub writes_per_s: Option<f64>,
    /// Share of the interval the device was busy, 0–100.
    pub busy_percent: Option<f64>,
    /// This sample's probe (a 4 KiB write and fsync), and the percentiles over the recent ones.
    pub probe_ms: Option<f64>,
    pub probe_p50_ms: Option<f64>,
    pub probe_p99_ms: Option<f64>,
    pub probes: u64,
}

// ---------------------------------------------------------------------------------------------
// Devices

/// One line of mountinfo: its `MAJ:MIN`, mount point, filesystem type and source.
struct Mount {
    id: String,
    point: PathBuf,
    fs_type: String,
    source: String,
}

/// mountinfo escapes spaces and such as `\040`.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(Mount {
                id: (*f.get(2)?).to_owned(),
                point: PathBuf::from(unescape(f.get(4)?)),
                fs_type: (*r.first()?).to_owned(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// The device holding `dir`, from `mountinfo` (its text) and the sysfs at `sys`; the reason
/// when there is none.
fn device_of(dir: &Path, mountinfo: &str, sys: &Path) -> Result<Device, String> {
    let real = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let mount = parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| real.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .ok_or_else(|| "no mount found for it in /proc/self/mountinfo".to_owned())?;
    let block = |id: &str| sys.join("dev/block").join(id);
    // btrfs reports an anonymous device (0:N): the source names the real one.
    let id = if block(&mount.id).join("stat").is_file() {
        mount.id.clone()
    } else if mount.source.starts_with("/dev/") {
        let rdev = std::fs::metadata(&mount.source)
            .map_err(|e| format!("{}: {e}", mount.source))?
            .rdev();
        let id = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        if !block(&id).join("stat").is_file() {
            return Err(format!(
                "{}: no {} to read",
                mount.source,
                block(&id).display()
            ));
        }
        id
    } else {
        return Err(format!(
            "{} ({}) is not on a block device",
            mount.point.display(),
            mount.fs_type
        ));
    };
    let name = std::fs::read_to_string(block(&id).join("uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
        })
        .unwrap_or_else(|| id.clone());
    Ok(Device {
        id,
        name,
        fs_type: mount.fs_type,
        mount_point: mount.point,
    })
}

fn read_counters(sys: &Path, id: &str) -> Result<Counters, String> {
    let path = sys.join("dev/block").join(id).join("stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    if f.len() < 10 {
        return Err(format!(
            "{}: {} fields, expected 11 or more",
            path.display(),
            f.len()
        ));
    }
    Ok(Counters {
        reads: f[0],
        read_sectors: f[2],
        writes: f[4],
        write_sectors: f[6],
        busy_ms: f[9],
    })
}

/// One probe: a 4 KiB write and fsync of a transient file in `dir`, timed.
fn probe(dir: &Path) -> Result<Duration, VolumeError> {
    let path = dir.join(format!(
        "{}io-probe-{:016x}",
        fsops::TRANSIENT_PREFIX,
        rand::random::<u64>()
    ));
    let started = Instant::now();
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)?;
        f.write_all(&[0x5a; 4096])?;
        f.sync_all()
    })();
    // A card that is dying, for the test of volume.slow_io.
    #[cfg(feature = "failpoints")]
    fail::fail_point!("volume-io-probe-slow");
    let took = started.elapsed();
    let _ = std::fs::remove_file(&path);
    written.map_err(|e| VolumeError::io("probe", &path, &e))?;
    Ok(took)
}

/// The `p`-th percentile (0–100) of `values` (nearest rank).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What the blocking sample found for one volume.
struct Sampled {
    name: VolumeName,
    device: Result<Device, String>,
    rates: Option<(Counters, Duration)>,
    probe: Result<Duration, VolumeError>,
}

/// Samples `names` over `interval`: devices and counters first, one probe each, the rest of
/// the interval, counters again. `sys`: the sysfs root (`/sys`).
fn sample(
    s: &super::Settings,
    names: &[VolumeName],
    interval: Duration,
    sys: &Path,
) -> Vec<Sampled> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let started = Instant::now();
    type Found = (
        VolumeName,
        Option<PathBuf>,
        Result<Device, String>,
        Option<Counters>,
    );
    let mut found: Vec<Found> = names
        .iter()
        .map(|name| {
            let dir = store::fresh_meta(s, name)
                .ok()
                .map(|m| store::data_dir(&s.root, &m));
            let device = match &dir {
                Some(d) => device_of(d, &mountinfo, sys),
                None => Err("its metadata cannot be read".to_owned()),
            };
            let before = device
                .as_ref()
                .ok()
                .and_then(|d| read_counters(sys, &d.id).ok());
            (name.clone(), dir, device, before)
        })
        .collect();
    let probes: Vec<Result<Duration, VolumeError>> = found
        .iter()
        .map(|(name, dir, _, _)| match dir {
            Some(dir) => probe(dir),
            None => Err(VolumeError::NotFound {
                volume: name.to_string(),
            }),
        })
        .collect();
    if let Some(rest) = interval.checked_sub(started.elapsed()) {
        std::thread::sleep(rest);
    }
    let took = started.elapsed();
    found
        .drain(..)
        .zip(probes)
        .map(|((name, _, device, before), probe)| {
            let rates = match (&device, before) {
                (Ok(d), Some(before)) => read_counters(sys, &d.id).ok().map(|after| {
                    (
                        Counters {
                            reads: after.reads.saturating_sub(before.reads),
                            read_sectors: after.read_sectors.saturating_sub(before.read_sectors),
                            writes: after.writes.saturating_sub(before.writes),
                            write_sectors: after.write_sectors.saturating_sub(before.write_sectors),
                            busy_ms: after.busy_ms.saturating_sub(before.busy_ms),
                        },
                        took,
                    )
                }),
                _ => None,
            };
            let device = match (device, &rates) {
                (Ok(d), Some(_)) => Ok(d),
                (Ok(d), None) => Err(format!("{}: its counters cannot be read", d.name)),
                (Err(e), _) => Err(e),
            };
            Sampled {
                name,
                device,
                rates,
                probe,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// On the actor

/// Recent probes and the slow-I/O state, per volume.
#[derive(Debug, Default)]
pub(super) struct Probes {
    recent: BTreeMap<VolumeName, VecDeque<f64>>,
    slow: std::collections::BTreeSet<VolumeName>,
}

impl Handler<VolumeStats> for VolumeActor {
    type Result = super::Reply<Vec<IoStats>>;

    fn handle(&mut self, msg: VolumeStats, _: &mut Context<Self>) -> Self::Result {
        let names: Vec<VolumeName> = match &msg.name {
            Some(n) => vec![n.clone()],
            None => self.volumes.keys().cloned().collect(),
        };
        let check = match &msg.name {
            Some(n) => self.known(n),
            None => self.root_ok(),
        };
        let interval = msg.interval.min(Duration::from_secs(1));
        self.on_disk(
            check,
            move |s| Ok(sample(s, &names, interval, Path::new("/sys"))),
            move |act, res| Ok(res?.into_iter().map(|x| act.take_sample(x)).collect()),
        )
    }
}

impl VolumeActor {
    fn take_sample(&mut self, x: Sampled) -> IoStats {
        let probe_ms = x.probe.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0);
        let recent = self.probes.recent.entry(x.name.clone()).or_default();
        if let Some(ms) = probe_ms {
            recent.push_back(ms);
            while recent.len() > PROBES_KEPT {
                recent.pop_front();
            }
        }
        let all: Vec<f64> = recent.iter().copied().collect();
        let p99 = percentile(&all, 99.0);
        self.check_slow_io(&x.name, p99);
        let p50 = percentile(&all, 50.0);
        let per_s = |n: u64, d: Duration| n as f64 / d.as_secs_f64().max(0.001);
        let (device, unavailable) = match x.device {
            Ok(d) => (Some(d), None),
            Err(e) => (None, Some(e)),
        };
        let stats = IoStats {
            volume: x.name,
            device,
            unavailable,
            interval_ms: x.rates.map_or(0, |(_, d)| d.as_millis() as u64),
            read_bytes_per_s: x.rates.map(|(c, d)| per_s(c.read_sectors * 512, d)),
            write_bytes_per_s: x.rates.map(|(c, d)| per_s(c.write_sectors * 512, d)),
            reads_per_s: x.rates.map(|(c, d)| per_s(c.reads, d)),
            writes_per_s: x.rates.map(|(c, d)| per_s(c.writes, d)),
            busy_percent: x
                .rates
                .map(|(c, d)| (c.busy_ms as f64 / (d.as_secs_f64() * 1000.0) * 100.0).min(100.0)),
            probe_ms,
            probe_p50_ms: p50,
            probe_p99_ms: p99,
            probes: all.len() as u64,
        };
        Self::record_sample(&stats);
        stats
    }

    /// Puts a sample on `/metrics` (docs/metrics.md): every `VolumeStats` refreshes them,
    /// the scheduler's `volume_usage` job among its callers.
    fn record_sample(stats: &IoStats) {
        let secs = |ms: Option<f64>| ms.map(|ms| ms / 1000.0);
        crate::metrics::volume_io(
            stats.volume.as_str(),
            crate::metrics::VolumeIo {
                read_bytes_per_s: stats.read_bytes_per_s,
                write_bytes_per_s: stats.write_bytes_per_s,
                reads_per_s: stats.reads_per_s,
                writes_per_s: stats.writes_per_s,
                busy_ratio: stats.busy_percent.map(|p| p / 100.0),
                probe_p50_s: secs(stats.probe_p50_ms),
                probe_p99_s: secs(stats.probe_p99_ms),
            },
        );
    }

    /// `volume.slow_io` once per crossing of `volumes.slow_io_threshold` by the probes' p99.
    fn check_slow_io(&mut self, name: &VolumeName, p99: Option<f64>) {
        let Some(p99) = p99 else { return };
        let threshold = self.settings.slow_io_threshold.as_secs_f64() * 1000.0;
        let slow = self.probes.slow.contains(name);
        if !slow && p99 >= threshold {
            self.probes.slow.insert(name.clone());
            events::emit(events::VolumeSlowIo {
                volume: name.to_string(),
                p99_ms: p99.round() as u64,
                threshold_ms: threshold.round() as u64,
            });
        } else if slow && p99 < threshold * 0.75 {
            self.probes.slow.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_the_longest_mount_and_no_device_for_tmpfs() {
        let info = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:50 / /run/my\\040dir rw - tmpfs tmpfs rw\n";
        let mounts = parse_mountinfo(info);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].point, PathBuf::from("/run/my dir"));
        // A /sys that cannot be read: unavailable, with the reason, no panic.
        let err =
            device_of(Path::new("/"), info, Path::new("/nonexistent-sys")).expect_err("no sys");
        assert!(err.contains("/dev/vda") || err.contains("block"), "{err}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
