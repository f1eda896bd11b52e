//! Retention policies: which snapshots a `forget` keeps, and why.
//!
//! Rules follow the familiar keep-last / hourly / daily / weekly / monthly / yearly / within /
//! tag scheme. A bucket rule such as `daily N` walks snapshots newest first and keeps the newest
//! snapshot of each of the N most recent days that have one. A snapshot is kept if any rule keeps
//! it, and every rule that kept it is reported. Snapshots of kind `manual` or `restore-point` are
//! never removed by a policy; they go only when named explicitly.

use crate::id::SnapshotId;
use chrono::{Datelike, TimeZone, Timelike};

/// Kinds a policy never removes.
pub const PROTECTED_KINDS: [&str; 2] = ["manual", "restore-point"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub keep_last: Option<usize>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    /// Keep everything newer than this many nanoseconds before now.
    pub keep_within_ns: Option<i64>,
    pub keep_tags: Vec<String>,
}

impl Policy {
    /// True if no rule is set (such a policy would keep nothing).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

/// What a policy sees of a snapshot.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: SnapshotId,
    pub time_ns: i64,
    pub kind: String,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub id: SnapshotId,
    pub time_ns: i64,
    pub kind: String,
    pub keep: bool,
    /// Why it is kept (empty when it is removed).
    pub reasons: Vec<String>,
}

/// Parses a duration such as `7d`, `12h`, `30m` (minutes), `2w`, `6mo` (30-day months), `1y`
/// (365 days) or a sum like `1d12h`; returns nanoseconds.
pub fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs: i64 = match &rest[..unit_len] {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "mo" => 30 * 86_400,
            "y" => 365 * 86_400,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(secs)?.checked_mul(1_000_000_000)?)?;
    }
    Some(total)
}

/// Decides for every snapshot in `snaps`. `kind` limits the policy to snapshots of that kind
/// (others are kept). Bucket boundaries (hours, days, weeks, months, years) are taken in `tz`.
/// Returns decisions newest first.
pub fn decide<Tz: TimeZone>(
    snaps: &[Candidate],
    policy: &Policy,
    kind: Option<&str>,
    now_ns: i64,
    tz: &Tz,
) -> Vec<Decision> {
    let mut order: Vec<&Candidate> = snaps.iter().collect();
    // Newest first; ties broken by id so the result does not depend on input order.
    order.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(b.id.cmp(&a.id)));

    type Key = fn(&chrono::DateTime<chrono::FixedOffset>) -> (i32, u32, u32, u32);
    let buckets: [(&str, Option<usize>, Key); 5] = [
        ("hourly", policy.keep_hourly, |t| {
            (t.year(), t.month(), t.day(), t.hour())
        }),
        ("daily", policy.keep_daily, |t| {
            (t.year(), t.month(), t.day(), 0)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let w = t.iso_week();
            (w.year(), w.week(), 0, 0)
        }),
        ("monthly", policy.keep_monthly, |t| {
            (t.year(), t.month(), 0, 0)
        }),
        ("yearly", policy.keep_yearly, |t| (t.year(), 0, 0, 0)),
    ];
    let mut kept_in_bucket = [0usize; 5];
    let mut last_bucket: [Option<(i32, u32, u32, u32)>; 5] = [None; 5];
    let mut governed = 0usize;

    let mut out = Vec::with_capacity(order.len());
    for s in order {
        let mut reasons = Vec::new();
        if PROTECTED_KINDS.contains(&s.kind.as_str()) {
            reasons.push(format!("kind {}: kept until deleted", s.kind));
        } else if kind.is_some_and(|k| k != s.kind) {
            reasons.push(format!("kind {}: not covered by this policy", s.kind));
        } else {
            governed += 1;
            if policy.keep_last.is_some_and(|n| governed <= n) {
                reasons.push(format!("last {}", governed));
            }
            if let Some(within) = policy.keep_within_ns
                && s.time_ns >= now_ns.saturating_sub(within)
            {
                reasons.push("within".to_string());
            }
            if let Some(tag) = s.tags.iter().find(|t| policy.keep_tags.contains(t)) {
                reasons.push(format!("tag {tag}"));
            }
            let local = tz.timestamp_nanos(s.time_ns).fixed_offset();
            for (k, (name, limit, key)) in buckets.iter().enumerate() {
                let Some(limit) = limit else { continue };
                let b = key(&local);
                if last_bucket[k] != Some(b) {
                    last_bucket[k] = Some(b);
                    if kept_in_bucket[k] < *limit {
                        kept_in_bucket[k] += 1;
                        reasons.push(format!("{name} {}", kept_in_bucket[k]));
                    }
                }
            }
        }
        out.push(Decision {
            id: s.id,
            time_ns: s.time_ns,
            kind: s.kind.clone(),
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use chrono::{FixedOffset, Utc};

    const H: i64 = 3_600_000_000_000;
    const D: i64 = 24 * H;

    fn snap(n: u8, time_ns: i64, kind: &str) -> Candidate {
        Candidate {
            id: ChunkId([n; 32]),
            time_ns,
            kind: kind.into(),
            tags: Vec::new(),
        }
    }

    fn kept(d: &[Decision]) -> Vec<u8> {
        let mut v: Vec<u8> = d.iter().filter(|d| d.keep).map(|d| d.id.0[0]).collect();
        v.sort();
        v
    }

    /// Hourly snapshots over three days starting 2026-11-01 00:30 UTC.
    fn hourly(n: usize) -> Vec<Candidate> {
        let t0 = Utc
            .with_ymd_and_hms(2026, 11, 1, 0, 30, 0)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap();
        (0..n)
            .map(|i| snap(i as u8, t0 + i as i64 * H, "hourly"))
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let s = hourly(10);
        let p = Policy {
            keep_last: Some(3),
            ..Policy::default()
        };
        let d = decide(&s, &p, None, 0, &Utc);
        assert_eq!(kept(&d), vec![7, 8, 9]);
        assert_eq!(d[0].reasons, vec!["last 1"]);
        assert!(d.iter().filter(|d| !d.keep).all(|d| d.reasons.is_empty()));
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        let s = hourly(72); // 3 days, 24 per day
        let p = Policy {
            keep_daily: Some(2),
            ..Policy::default()
        };
        let d = decide(&s, &p, None, 0, &Utc);
        // Newest of day 3 (index 71) and of day 2 (index 47).
        assert_eq!(kept(&d), vec![47, 71]);
    }

    #[test]
    fn buckets_follow_the_time_zone() {
        let s = hourly(48);
        let p = Policy {
            keep_daily: Some(10),
            ..Policy::default()
        };
        // In UTC the days end at index 23 and 47; at UTC+10 days end ten hours earlier.
        assert_eq!(kept(&decide(&s, &p, None, 0, &Utc)), vec![23, 47]);
        let east = FixedOffset::east_opt(10 * 3600).unwrap();
        assert_eq!(kept(&decide(&s, &p, None, 0, &east)), vec![13, 37, 47]);
    }

    #[test]
    fn weekly_monthly_yearly_and_hourly() {
        let t0 = Utc
            .with_ymd_and_hms(2024, 1, 1, 12, 0, 0)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap();
        // One snapshot every 10 days for ~2 years.
        let s: Vec<Candidate> = (0..73)
            .map(|i| snap(i, t0 + i as i64 * 10 * D, "daily"))
            .collect();
        let count = |p: Policy| {
            decide(&s, &p, None, 0, &Utc)
                .iter()
                .filter(|d| d.keep)
                .count()
        };
        let weekly = Policy {
            keep_weekly: Some(5),
            ..Policy::default()
        };
        assert_eq!(count(weekly), 5);
        let monthly = Policy {
            keep_monthly: Some(6),
            ..Policy::default()
        };
        assert_eq!(count(monthly), 6);
        let yearly = Policy {
            keep_yearly: Some(5),
            ..Policy::default()
        };
        assert_eq!(count(yearly), 2); // 2024 and 2025 only
        let h = hourly(5);
        let p = Policy {
            keep_hourly: Some(2),
            ..Policy::default()
        };
        assert_eq!(kept(&decide(&h, &p, None, 0, &Utc)), vec![3, 4]);
    }

    #[test]
    fn within_tags_kinds_and_reasons() {
        let mut s = hourly(10);
        s[2].tags.push("keep".into());
        s[3].kind = "manual".into();
        s[4].kind = "restore-point".into();
        s[5].kind = "daily".into();
        let now = s[9].time_ns;
        let p = Policy {
            keep_within_ns: Some(2 * H),
            keep_tags: vec!["keep".into()],
            ..Policy::default()
        };
        let d = decide(&s, &p, Some("hourly"), now, &Utc);
        assert_eq!(kept(&d), vec![2, 3, 4, 5, 7, 8, 9]);
        let reason = |n: u8| d.iter().find(|d| d.id.0[0] == n).unwrap().reasons.clone();
        assert_eq!(reason(2), vec!["tag keep"]);
        assert_eq!(reason(3), vec!["kind manual: kept until deleted"]);
        assert_eq!(reason(5), vec!["kind daily: not covered by this policy"]);
        assert_eq!(reason(9), vec!["within"]);
    }

    #[test]
    fn ties_empty_input_and_several_reasons() {
        assert!(
            decide(
                &[],
                &Policy {
                    keep_last: Some(1),
                    ..Policy::default()
                },
                None,
                0,
                &Utc
            )
            .is_empty()
        );
        // Two snapshots at the same instant: the order (and so the choice) is by id.
        let s = vec![snap(1, 5 * H, "hourly"), snap(2, 5 * H, "hourly")];
        let p = Policy {
            keep_last: Some(1),
            keep_daily: Some(1),
            ..Policy::default()
        };
        let d = decide(&s, &p, None, 0, &Utc);
        assert_eq!(kept(&d), vec![2]);
        assert_eq!(d[0].reasons, vec!["last 1", "daily 1"]);
        let reversed: Vec<Candidate> = s.iter().rev().cloned().collect();
        assert_eq!(decide(&reversed, &p, None, 0, &Utc), d);
    }

    #[test]
    fn durations_and_empty_policy() {
        assert_eq!(parse_duration("7d"), Some(7 * D));
        assert_eq!(parse_duration("1d12h"), Some(D + 12 * H));
        assert_eq!(parse_duration("2w"), Some(14 * D));
        assert_eq!(parse_duration("90m"), Some(90 * 60_000_000_000));
        for bad in ["", "d", "7", "7x", "-1d", "99999999999999999999d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert!(Policy::default().is_empty());
        assert!(
            !Policy {
                keep_tags: vec!["a".into()],
                ..Policy::default()
            }
            .is_empty()
        );
    }
}
