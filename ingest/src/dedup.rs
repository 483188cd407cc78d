//! `Dedup`: drops repeats of an activity id seen within a horizon of event time. Pure.
//!
//! CloudTrail delivers some records more than once, and overlapping sources (a LookupEvents
//! backfill beside the S3 trail, a re-run of `ingest files`) repeat whole ranges. Ids are stable
//! ([`Activity::id`](trailguard_common::Activity)), so a repeat is recognized by id alone. Memory
//! is bounded twice: ids older than `horizon` before the newest event seen are forgotten, and so
//! are the oldest ids past `max_entries`.

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};

/// Activity ids are 32 hex digits: kept as 16 bytes. Anything else is hashed to 16 bytes.
fn compact(id: &str) -> u128 {
    u128::from_str_radix(id, 16).unwrap_or_else(|_| {
        let digest = trailguard_common::contract::stable_id([id]);
        u128::from_str_radix(&digest, 16).unwrap_or_default()
    })
}

/// Remembers recent activity ids.
pub struct Dedup {
    horizon: Duration,
    max_entries: usize,
    seen: HashSet<u128>,
    /// Ids in arrival order with their event time, for forgetting.
    order: VecDeque<(DateTime<Utc>, u128)>,
    newest: Option<DateTime<Utc>>,
}

impl Dedup {
    /// Remembers ids for `horizon` of event time, at most `max_entries` of them.
    pub fn new(horizon: std::time::Duration, max_entries: usize) -> Self {
        Dedup {
            horizon: Duration::from_std(horizon).unwrap_or(Duration::MAX),
            max_entries,
            seen: HashSet::new(),
            order: VecDeque::new(),
            newest: None,
        }
    }

    /// True the first time `id` is seen within the horizon; false for a repeat.
    pub fn first_time(&mut self, id: &str, event_time: DateTime<Utc>) -> bool {
        let key = compact(id);
        if self.max_entries == 0 || self.seen.contains(&key) {
            return self.max_entries == 0;
        }
        self.seen.insert(key);
        self.order.push_back((event_time, key));
        if self.newest.is_none_or(|n| event_time > n) {
            self.newest = Some(event_time);
        }
        self.forget();
        true
    }

    fn forget(&mut self) {
        // A horizon reaching before the first date there is forgets nothing by age.
        let cutoff = self.newest.and_then(|n| n.checked_sub_signed(self.horizon));
        while let Some((time, _)) = self.order.front() {
            let too_old = cutoff.is_some_and(|c| *time < c);
            if !too_old && self.order.len() <= self.max_entries {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
        }
    }

    /// Forgets every id (after a failed publish, whose ids may not have reached the broker).
    pub fn clear(&mut self) {
        self.seen.clear();
        self.order.clear();
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + minute * 60, 0).unwrap_or_default()
    }

    #[test]
    fn repeats_within_the_horizon_are_dropped() {
        let mut d = Dedup::new(std::time::Duration::from_secs(3600), 100);
        assert!(d.first_time("a", at(0)));
        assert!(!d.first_time("a", at(0)));
        assert!(d.first_time("b", at(1)));
        assert!(!d.first_time("a", at(2)));
        let id = trailguard_common::contract::stable_id(["x"]);
        assert!(d.first_time(&id, at(2)));
        assert!(!d.first_time(&id, at(2)));
    }

    #[test]
    fn a_horizon_past_every_date_forgets_nothing_by_age() {
        // What configuration refuses (more than 365 days) must still not panic here.
        for horizon in [u64::MAX, 1_000_000 * 365 * 86_400] {
            let mut d = Dedup::new(std::time::Duration::from_secs(horizon), 100);
            assert!(d.first_time("a", at(0)));
            assert!(d.first_time("b", at(1_000_000)));
            assert!(!d.first_time("a", at(2)));
        }
    }

    #[test]
    fn old_ids_are_forgotten() {
        let mut d = Dedup::new(std::time::Duration::from_secs(3600), 100);
        assert!(d.first_time("a", at(0)));
        assert!(d.first_time("b", at(120)));
        assert_eq!(d.len(), 1);
        assert!(
            d.first_time("a", at(0)),
            "past the horizon an id counts as new"
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Dedup::new(std::time::Duration::from_secs(86_400), 3);
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            assert!(d.first_time(id, at(i as i64)));
        }
        assert_eq!(d.len(), 3);
        assert!(d.first_time("a", at(5)));
    }

    #[test]
    fn zero_entries_disables() {
        let mut d = Dedup::new(std::time::Duration::from_secs(60), 0);
        assert!(d.first_time("a", at(0)));
        assert!(d.first_time("a", at(0)));
    }
}
