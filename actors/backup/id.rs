//! [`BackupId`]: one backup run's name, `20261130T020000Z-3f9a` — its start in UTC to the
//! second, then four random hex digits so that two runs of the same second (the CLI and the
//! scheduler on a clock that jumped) never share a name. The text sorts like the time, so a
//! listing of the storage root is already in order, and so does the type ([`Ord`]).
//!
//! The time is passed in, never read here: the caller's clock decides (and tests fix it).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};

/// The name of one backup run; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId {
    // Field order is the sort order: time first, then the suffix.
    at: DateTime<Utc>,
    suffix: u16,
}

/// A string that is not a [`BackupId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a backup id (like 20261130T020000Z-3f9a)")]
pub struct InvalidBackupId {
    /// What was given, cut to 64 characters (it may come from a file name or a request).
    pub text: String,
}

const TIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl BackupId {
    /// The id of a run that starts at `now`, with a random suffix.
    pub fn new(now: DateTime<Utc>) -> BackupId {
        BackupId::with_suffix(now, rand::random::<u16>())
    }

    /// The id for `at` (truncated to the second) and a given suffix.
    pub fn with_suffix(at: DateTime<Utc>, suffix: u16) -> BackupId {
        let at = at.with_nanosecond(0).unwrap_or(at);
        BackupId { at, suffix }
    }

    /// When the run started, to the second.
    pub fn time(&self) -> DateTime<Utc> {
        self.at
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:04x}", self.at.format(TIME_FORMAT), self.suffix)
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;

    fn from_str(s: &str) -> Result<BackupId, InvalidBackupId> {
        let invalid = || InvalidBackupId {
            text: s.chars().take(64).collect(),
        };
        // Exactly `YYYYMMDDTHHMMSSZ-xxxx`, lower-case hex: one spelling per id, so the text
        // of two ids compares like the ids.
        let (time, suffix) = s.split_once('-').ok_or_else(invalid)?;
        if time.len() != 16
            || !time.is_ascii()
            || suffix.len() != 4
            || !suffix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid());
        }
        let at = NaiveDateTime::parse_from_str(time, TIME_FORMAT)
            .map_err(|_| invalid())?
            .and_utc();
        let suffix = u16::from_str_radix(suffix, 16).map_err(|_| invalid())?;
        Ok(BackupId { at, suffix })
    }
}

impl serde::Serialize for BackupId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BackupId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BackupId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn text_round_trips_and_names_the_second() {
        let id = BackupId::with_suffix(at("2026-11-30T02:00:00.750Z"), 0x3f9a);
        assert_eq!(id.to_string(), "20261130T020000Z-3f9a");
        assert_eq!(id.time(), at("2026-11-30T02:00:00Z"));
        assert_eq!("20261130T020000Z-3f9a".parse::<BackupId>(), Ok(id));
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(json, "\"20261130T020000Z-3f9a\"");
        assert_eq!(serde_json::from_str::<BackupId>(&json).expect("back"), id);
    }

    #[test]
    fn new_takes_the_given_time_and_a_suffix() {
        let now = Utc
            .with_ymd_and_hms(2027, 1, 2, 3, 4, 5)
            .single()
            .expect("time");
        let id = BackupId::new(now);
        assert_eq!(id.time(), now);
        assert!(id.to_string().starts_with("20270102T030405Z-"), "{id}");
    }

    #[test]
    fn order_is_time_then_suffix_and_matches_the_text() {
        let mut ids = [
            BackupId::with_suffix(at("2026-11-30T02:00:01Z"), 0x0000),
            BackupId::with_suffix(at("2026-11-30T02:00:00Z"), 0xffff),
            BackupId::with_suffix(at("2025-12-31T23:59:59Z"), 0x1234),
            BackupId::with_suffix(at("2026-11-30T02:00:00Z"), 0x00ff),
        ];
        ids.sort();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(texts, sorted);
        assert_eq!(texts[0], "20251231T235959Z-1234");
        assert_eq!(texts[3], "20261130T020001Z-0000");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "20261130T020000Z",
            "20261130T020000Z-3F9A",
            "20261130T020000Z-3f9",
            "20261130T020000Z-3f9ab",
            "20261130T020000-3f9a",
            "20261330T020000Z-3f9a",
            "20261130T250000Z-3f9a",
            "2026-11-30T02:00:00Z-3f9a",
            "../../etc-3f9a",
            "20261130T020000Z-+f9a",
            "２0261130T020000Z-3f9a",
        ] {
            let err = bad.parse::<BackupId>().expect_err(bad);
            assert!(err.to_string().contains("not a backup id"), "{err}");
        }
        assert!(serde_json::from_str::<BackupId>("\"x\"").is_err());
    }
}
