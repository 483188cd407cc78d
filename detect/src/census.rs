//! How many actors act from each country, for the whole organization, by day.
//!
//! `infrequent-country` asks whether a country is rare *for the organization*. Activities are
//! partitioned by actor, so no partition sees the organization: each counts its own actors, per
//! UTC day — actors first seen that day, and for each country the actors that acted from it that
//! day (actor-days) — and publishes the day's counts on the facts topic as one record per
//! (day, partition), replaced as the day goes on. Every instance reads them all back.
//!
//! A judgement about an activity on day D reads the days before D only, so it needs the facts
//! complete through the start of D (see [`crate::facts::Facts::complete_through`]): the same
//! activities then give the same answer whatever order partitions and instances run in. A
//! day's counts from one partition are final once that partition's marks have passed the day:
//! its records are published before its marks.
//!
//! A record carries the last activities offset it counted, so a replay after a restart (or by
//! the partition's next owner) counts nothing twice, and an older record read back never
//! replaces a newer one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Most countries one record may name (there are fewer than 300 codes): a record with more is
/// not ours, and is ignored rather than grown into memory.
pub const MAX_COUNTRIES: usize = 300;

/// One partition's counts for one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusDay {
    /// The last activities offset counted (`-1`: none).
    pub offset: i64,
    /// Actors first seen this day.
    pub actors: u32,
    /// Country (ISO code) → actors that acted from it this day.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub countries: BTreeMap<String, u32>,
}

/// What the organization's counts say about one country before one day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrgCounts {
    /// Actor-days from the country in the window.
    pub country: u64,
    /// Actor-days from any country in the window.
    pub all: u64,
    /// Actors ever first seen before the day.
    pub actors: u64,
}

/// The counts of every partition known here.
#[derive(Debug, Default)]
pub struct Census {
    /// (day number since the epoch, activities partition) → counts.
    days: BTreeMap<(i64, i32), CensusDay>,
    /// Day → actors first seen that day, over every partition (so a judgement sums days, not
    /// days × partitions).
    actors: BTreeMap<i64, u64>,
    /// The latest day counted.
    latest: i64,
    /// Days of countries kept before the days still to be judged (0: all).
    keep_days: i64,
}

/// Most (day, partition) records held: past it the oldest day goes (about 100 bytes each
/// without countries: a thousand partitions for over two years of days).
pub const MAX_RECORDS: usize = 1_000_000;

/// The UTC day of unix time `t`.
pub fn day_of(t: i64) -> i64 {
    t.div_euclid(DAY)
}

/// Whether `code` is a country code as the geolocation databases give them (two upper-case
/// letters).
fn is_country_code(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

impl Census {
    /// Keeps the countries of the `days` days (plus two for late activities) before the days
    /// still to be judged; the actors of every day are kept.
    pub fn keep(&mut self, days: i64) {
        self.keep_days = days.max(1) + 2;
    }

    /// Counts one activity of `partition` at `offset` (`None`: no replay protection, for
    /// tests) on `day`: a new actor, and the country it acted from for the first time that
    /// day. False when nothing changed (nothing to count, or counted before).
    pub fn count(
        &mut self,
        partition: i32,
        offset: Option<i64>,
        day: i64,
        new_actor: bool,
        country: Option<&str>,
    ) -> bool {
        if !new_actor && country.is_none() {
            return false;
        }
        let entry = self.days.entry((day, partition)).or_insert(CensusDay {
            offset: -1,
            ..CensusDay::default()
        });
        if let Some(offset) = offset {
            if offset <= entry.offset {
                return false;
            }
            entry.offset = offset;
        }
        if new_actor {
            entry.actors = entry.actors.saturating_add(1);
            *self.actors.entry(day).or_default() += 1;
        }
        if let Some(c) = country.filter(|c| is_country_code(c)) {
            if entry.countries.len() < MAX_COUNTRIES || entry.countries.contains_key(c) {
                let n = entry.countries.entry(c.to_string()).or_default();
                *n = n.saturating_add(1);
            }
        }
        self.latest = self.latest.max(day);
        self.bound();
        true
    }

    /// Takes a record read back from the facts topic, unless the one known is as recent, or
    /// it is not one detect writes (a day beyond `latest_day`, something other than country
    /// codes, too many of them).
    pub fn apply(&mut self, day: i64, partition: i32, record: CensusDay, latest_day: i64) {
        if day > latest_day
            || record.countries.len() > MAX_COUNTRIES
            || !record.countries.keys().all(|c| is_country_code(c))
        {
            return;
        }
        match self.days.get(&(day, partition)) {
            Some(known) if known.offset >= record.offset => {}
            known => {
                let before = known.map_or(0, |k| u64::from(k.actors));
                let actors = self.actors.entry(day).or_default();
                *actors = (*actors + u64::from(record.actors)).saturating_sub(before);
                self.days.insert((day, partition), record);
                self.latest = self.latest.max(day);
                self.bound();
            }
        }
    }

    /// The counts of `partition` on `day`, to publish.
    pub fn get(&self, day: i64, partition: i32) -> Option<&CensusDay> {
        self.days.get(&(day, partition))
    }

    /// The organization's counts for `country` over the `window` days before `day`.
    pub fn counts(&self, country: &str, day: i64, window: i64) -> OrgCounts {
        let mut out = OrgCounts {
            actors: self.actors.range(..day).map(|(_, n)| n).sum(),
            ..OrgCounts::default()
        };
        for counts in self
            .days
            .range((day.saturating_sub(window), i32::MIN)..(day, i32::MIN))
            .map(|(_, c)| c)
        {
            out.all += counts
                .countries
                .values()
                .map(|&n| u64::from(n))
                .sum::<u64>();
            out.country += counts.countries.get(country).map_or(0, |&n| u64::from(n));
        }
        out
    }

    /// Drops the countries of days no judgement still to come reads: before the window of
    /// `judged_from`, the earliest day still to be judged (the facts are complete up to it;
    /// pruning by the latest day counted instead would let a partition far ahead empty the
    /// window of one behind).
    pub fn prune(&mut self, judged_from: i64) {
        if self.keep_days == 0 {
            return;
        }
        let horizon = judged_from.min(self.latest).saturating_sub(self.keep_days);
        for (_, counts) in self.days.range_mut(..(horizon, i32::MIN)) {
            if !counts.countries.is_empty() {
                counts.countries = BTreeMap::new();
            }
        }
    }

    /// Records and days known (for the state gauge).
    pub fn len(&self) -> usize {
        self.days.len()
    }

    /// True when nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Keeps at most [`MAX_RECORDS`] records, dropping the oldest days.
    fn bound(&mut self) {
        while self.days.len() > MAX_RECORDS {
            let Some(((day, _), gone)) = self.days.pop_first() else {
                break;
            };
            if let Some(n) = self.actors.get_mut(&day) {
                *n = n.saturating_sub(u64::from(gone.actors));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_every_partition_and_only_from_earlier_days() {
        let mut census = Census::default();
        census.count(0, Some(0), 10, true, Some("US"));
        census.count(1, Some(0), 10, true, Some("US"));
        census.count(1, Some(1), 10, true, Some("DE"));
        census.count(2, Some(5), 11, true, Some("FR"));
        let before_11 = census.counts("US", 11, 30);
        assert_eq!(
            before_11,
            OrgCounts {
                country: 2,
                all: 3,
                actors: 3
            }
        );
        // Day 11's own counts are not used for day 11.
        assert_eq!(census.counts("FR", 11, 30).country, 0);
        assert_eq!(census.counts("FR", 12, 30).country, 1);
        // Outside the window: the actors still count, the countries do not.
        let later = census.counts("US", 50, 30);
        assert_eq!((later.country, later.all, later.actors), (0, 0, 4));
    }

    #[test]
    fn a_replayed_offset_counts_once_and_an_older_record_never_wins() {
        let mut census = Census::default();
        assert!(census.count(0, Some(7), 10, true, Some("US")));
        assert!(!census.count(0, Some(7), 10, true, Some("US")), "replayed");
        assert!(!census.count(0, Some(3), 10, true, Some("US")), "replayed");
        assert!(census.count(0, Some(8), 10, false, Some("DE")));
        let newer = census.get(10, 0).cloned().unwrap_or_default();
        let mut older = newer.clone();
        older.offset = 7;
        older.countries.remove("DE");
        census.apply(10, 0, older, 10);
        assert_eq!(census.get(10, 0), Some(&newer));
        // Not ours: too many countries, something other than country codes, a day ahead.
        let mut flood = newer.clone();
        flood.offset = 100;
        flood.countries = (0..MAX_COUNTRIES + 1).map(|n| (n.to_string(), 1)).collect();
        census.apply(10, 0, flood, 10);
        let mut long = newer.clone();
        long.offset = 100;
        long.countries.insert("X".repeat(1000), 1);
        census.apply(10, 0, long, 10);
        let mut ahead = newer;
        ahead.offset = 100;
        census.apply(11, 0, ahead, 10);
        assert_eq!(census.get(10, 0).map(|d| d.offset), Some(8), "ignored");
        assert!(census.get(11, 0).is_none());
        // A newer record of another instance replaces the actors it counted.
        let other = CensusDay {
            offset: 20,
            actors: 5,
            countries: [("US".to_string(), 5)].into(),
        };
        census.apply(10, 0, other, 10);
        assert_eq!(census.counts("US", 11, 30).actors, 5);
    }

    #[test]
    fn old_days_keep_their_actors_and_drop_their_countries() {
        let mut census = Census::default();
        census.keep(30);
        census.count(0, None, 0, true, Some("US"));
        census.count(1, None, 100, true, Some("US"));
        // Partition 1 is far ahead; partition 0 is still judging day 1: day 0 is kept.
        census.prune(1);
        assert_eq!(census.counts("US", 1, 30).country, 1);
        census.prune(100);
        assert!(census.get(0, 0).is_some_and(|d| d.countries.is_empty()));
        assert_eq!(census.get(0, 0).map(|d| d.actors), Some(1));
        assert_eq!(census.counts("US", 101, 30).actors, 2);
    }
}
