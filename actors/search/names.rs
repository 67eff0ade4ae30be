//! Lucid's Elasticsearch names: the five entities, the month an index holds, and the index
//! and alias names built from them — `lucid-{entity}-{YYYY.MM}`, the read alias
//! `lucid-{entity}` over every month, the write alias `lucid-{entity}-write` on one index.
//! Every name is built and parsed here, nowhere else.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

/// What Lucid keeps in Elasticsearch. Anything else cannot be named in code and is refused
/// where names come from outside ([`Entity::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    Sessions,
    Blocks,
    Transactions,
    Manifests,
    AuditLogs,
}

impl Entity {
    pub const ALL: [Entity; 5] = [
        Entity::Sessions,
        Entity::Blocks,
        Entity::Transactions,
        Entity::Manifests,
        Entity::AuditLogs,
    ];

    /// The name in index and alias names.
    pub fn name(self) -> &'static str {
        match self {
            Entity::Sessions => "sessions",
            Entity::Blocks => "blocks",
            Entity::Transactions => "transactions",
            Entity::Manifests => "manifests",
            Entity::AuditLogs => "audit-logs",
        }
    }

    /// The field whose time (UTC) decides a document's month.
    pub fn time_field(self) -> &'static str {
        match self {
            Entity::Sessions => "started_at",
            Entity::Blocks | Entity::Transactions | Entity::AuditLogs => "timestamp",
            Entity::Manifests => "created_at",
        }
    }

    pub fn parse(s: &str) -> Result<Entity, String> {
        Entity::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown entity {s:?}; one of {}",
                    Entity::ALL.map(Entity::name).join(", ")
                )
            })
    }

    /// `lucid-{entity}`: every month of this entity, for searches.
    pub fn read_alias(self) -> String {
        format!("lucid-{}", self.name())
    }

    /// `lucid-{entity}-write`: one index, where late documents go.
    pub fn write_alias(self) -> String {
        format!("lucid-{}-write", self.name())
    }

    /// `lucid-{entity}-*`: the pattern of the entity's index template.
    pub fn index_pattern(self) -> String {
        format!("lucid-{}-*", self.name())
    }

    /// The index template's name.
    pub fn template_name(self) -> String {
        format!("lucid-{}", self.name())
    }

    pub fn index(self, month: Month) -> IndexName {
        IndexName {
            entity: self,
            month,
        }
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Entity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::parse(s)
    }
}

/// A calendar month in UTC, `YYYY.MM` in index names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Month {
    year: i32,
    /// 1–12.
    month: u32,
}

impl Month {
    /// Years an index name may carry.
    const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

    pub fn new(year: i32, month: u32) -> Option<Month> {
        (Self::YEARS.contains(&year) && (1..=12).contains(&month)).then_some(Month { year, month })
    }

    /// The month `t` falls in (UTC).
    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn month(self) -> u32 {
        self.month
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn prev(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// Its first instant, 00:00:00 UTC on the 1st.
    pub fn start(self) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(self.year, self.month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| Utc.from_utc_datetime(&t))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The first instant after it (the next month's start): ages are counted from here.
    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// `YYYY.MM`, strictly: four digits, a dot, two digits.
    pub fn parse(s: &str) -> Option<Month> {
        let (y, m) = s.split_once('.')?;
        if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Month::new(y.parse().ok()?, m.parse().ok()?)
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}.{:02}", self.year, self.month)
    }
}

/// A monthly index: `lucid-{entity}-{YYYY.MM}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexName {
    pub entity: Entity,
    pub month: Month,
}

impl IndexName {
    /// Parses a concrete index name; the error says why it is not one of Lucid's.
    pub fn parse(name: &str) -> Result<IndexName, String> {
        let rest = name
            .strip_prefix("lucid-")
            .ok_or_else(|| "does not start with lucid-".to_owned())?;
        let (entity, month) = rest
            .rsplit_once('-')
            .ok_or_else(|| "has no -YYYY.MM suffix".to_owned())?;
        let entity = Entity::parse(entity)?;
        let month = Month::parse(month)
            .ok_or_else(|| format!("{month:?} is not a month (YYYY.MM, 1970-9999)"))?;
        Ok(IndexName { entity, month })
    }
}

impl fmt::Display for IndexName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lucid-{}-{}", self.entity.name(), self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("rfc3339")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_document_belongs_to_the_utc_month_of_its_time() {
        let last = at("2026-11-30T23:59:59.999Z");
        let first = at("2026-12-01T00:00:00Z");
        assert_eq!(
            Entity::Sessions.index(Month::of(last)).to_string(),
            "lucid-sessions-2026.11"
        );
        assert_eq!(
            Entity::Sessions.index(Month::of(first)).to_string(),
            "lucid-sessions-2026.12"
        );
        // 00:30 on the 1st in UTC+2 is still the previous month in UTC.
        let local = at("2026-12-01T00:30:00+02:00");
        assert_eq!(Month::of(local).to_string(), "2026.11");
        // The year turns.
        let new_year = at("2027-01-01T00:00:00Z");
        assert_eq!(Month::of(new_year), Month::of(last).next().next());
        assert_eq!(Month::new(2026, 12).map(Month::next), Month::new(2027, 1));
        assert_eq!(Month::new(2027, 1).map(Month::prev), Month::new(2026, 12));
        assert_eq!(Month::of(last).end(), first);
        assert_eq!(Month::of(first).start(), first);
    }

    #[test]
    fn index_names_round_trip_and_strangers_are_refused_with_a_reason() {
        for e in Entity::ALL {
            let month = Month::new(2026, 2).expect("month");
            let name = e.index(month).to_string();
            assert_eq!(IndexName::parse(&name), Ok(e.index(month)), "{name}");
        }
        assert_eq!(
            IndexName::parse("lucid-audit-logs-2026.02").map(|i| i.entity),
            Ok(Entity::AuditLogs)
        );
        for bad in [
            "sessions-2026.02",
            "lucid-sessions",
            "lucid-sessions-2026.13",
            "lucid-sessions-2026.2",
            "lucid-sessions-26.02",
            "lucid-sessions-2026-02",
            "lucid-sessions-2026.02-restored",
            "lucid-users-2026.02",
            "lucid-sessions-+026.02",
        ] {
            assert!(IndexName::parse(bad).is_err(), "{bad} parsed");
        }
        assert!(Entity::parse("session").is_err());
        assert_eq!(Entity::AuditLogs.read_alias(), "lucid-audit-logs");
        assert_eq!(Entity::AuditLogs.write_alias(), "lucid-audit-logs-write");
    }
}
