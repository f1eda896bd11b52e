//! Retention policies: which snapshots a `forget` keeps, and why.
//!
//! Rules follow the familiar keep-last / hourly / daily / weekly / monthly / yearly / within /
//! tag scheme. A bucket rule such as `daily N` walks snapshots newest first and keeps the newest
//! snapshot of each of the N most recent days that have one. A snapshot is kept if any rule keeps
//! it, and every rule that kept it is reported. Snapshots of kind `manual` or `restore-point` are
//! never removed by a policy; they go only when named explicitly. Nor are archived WAL files and
//! PostgreSQL restore point records (see [`PROTECTED_KINDS`]).

use crate::codec::frame;
use crate::crypto::{Keys, Object};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::storage::Backend;
use chrono::{Datelike, TimeZone, Timelike};
use std::collections::BTreeMap;

/// Kinds a policy never removes. Archived WAL files and restore point records are not states
/// of the data that a count or an age can judge: they go by name, or by the rule of
/// [`crate::pg::retain`] (which every forget and delete applies after the policy), once they
/// lie before the start of the oldest base backup that is left.
pub const PROTECTED_KINDS: [&str; 4] = [
    "manual",
    RESTORE_POINT_KIND,
    crate::snapshots::PG_WAL,
    crate::snapshots::PG_POINT,
];
/// The kind of the snapshots restore takes of what it replaces.
const RESTORE_POINT_KIND: &str = "restore-point";

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// The count rules, by their names in [`Policy::parse`] (`keep-last`...), with their values.
    pub fn counts(&self) -> [(&'static str, Option<usize>); 6] {
        [
            ("keep-last", self.keep_last),
            ("keep-hourly", self.keep_hourly),
            ("keep-daily", self.keep_daily),
            ("keep-weekly", self.keep_weekly),
            ("keep-monthly", self.keep_monthly),
            ("keep-yearly", self.keep_yearly),
        ]
    }

    /// True if no rule is set (such a policy would keep nothing).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }
}

impl Policy {
    /// Parses rules written as `keep-last=24,keep-daily=7,keep-within=7d,keep-tag=release`
    /// (`within=7d` for short).
    pub fn parse(rules: &str) -> Result<Policy> {
        let mut p = Policy::default();
        for rule in rules.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (key, value) = rule.split_once('=').ok_or_else(|| {
                Error::invalid(format!("retention rule {rule:?}: expected NAME=VALUE"))
            })?;
            let count = || {
                value.parse::<usize>().map_err(|_| {
                    Error::invalid(format!("retention rule {rule:?}: expected a count"))
                })
            };
            match key.trim() {
                "keep-last" => p.keep_last = Some(count()?),
                "keep-hourly" => p.keep_hourly = Some(count()?),
                "keep-daily" => p.keep_daily = Some(count()?),
                "keep-weekly" => p.keep_weekly = Some(count()?),
                "keep-monthly" => p.keep_monthly = Some(count()?),
                "keep-yearly" => p.keep_yearly = Some(count()?),
                "keep-within" | "within" => {
                    p.keep_within_ns = Some(parse_duration(value).ok_or_else(|| {
                        Error::invalid(format!(
                            "retention rule {rule:?}: expected a duration such as 7d or 12h"
                        ))
                    })?)
                }
                "keep-tag" => p.keep_tags.push(value.trim().to_string()),
                other => {
                    return Err(Error::invalid(format!(
                        "unknown retention rule {other:?} (keep-last, keep-hourly, keep-daily, \
                         keep-weekly, keep-monthly, keep-yearly, keep-within, keep-tag)"
                    )));
                }
            }
        }
        if p.is_empty() {
            return Err(Error::invalid("a retention policy needs at least one rule"));
        }
        Ok(p)
    }
}

/// Retention settings kept in the repository (`strata config set`): a policy per snapshot kind
/// and a cap on the number of snapshots of kinds that are not protected.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub policies: BTreeMap<String, Policy>,
    /// At most this many snapshots of policy-governed kinds; the oldest go first.
    pub max_snapshots: Option<usize>,
}

pub const SETTINGS_NAME: &str = "retention";
pub const SETTINGS_MAGIC: &[u8; 8] = b"STRARETN";
pub const SETTINGS_VERSION: u32 = 1;

impl Settings {
    /// Reads the stored settings (none stored: the defaults). In an encrypted repository the
    /// payload is sealed, so a tampered policy cannot make `forget` remove snapshots.
    pub fn load(backend: &dyn Backend, keys: Option<&Keys>) -> Result<Settings> {
        if !backend.exists(SETTINGS_NAME)? {
            return Ok(Settings::default());
        }
        Settings::decode(&backend.get(SETTINGS_NAME)?, keys)
    }

    /// Decodes the stored bytes of the settings.
    pub fn decode(bytes: &[u8], keys: Option<&Keys>) -> Result<Settings> {
        let what = "retention settings";
        let (_, payload) = frame::unwrap(SETTINGS_MAGIC, SETTINGS_VERSION, bytes, what)?;
        let opened;
        let json = match keys {
            Some(k) => {
                opened = k.open(Object::Retention, payload, what)?;
                &opened[..]
            }
            None => payload,
        };
        serde_json::from_slice(json).map_err(|e| Error::corrupt(format!("{what}: {e}")))
    }

    /// Writes the settings atomically (the caller holds the repository lock).
    pub fn store(&self, backend: &dyn Backend, keys: Option<&Keys>) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::invalid(format!("encoding retention settings: {e}")))?;
        if let Some(k) = keys {
            json = k.seal(Object::Retention, &json)?;
        }
        backend.put(
            SETTINGS_NAME,
            &frame::wrap(SETTINGS_MAGIC, SETTINGS_VERSION, &json),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.max_snapshots.is_none()
    }
}

/// Decides with the stored settings: each kind's snapshots by that kind's policy (kinds without
/// one are kept), then `max_snapshots`. Newest first.
pub fn decide_with_settings<Tz: TimeZone>(
    snaps: &[Candidate],
    settings: &Settings,
    now_ns: i64,
    tz: &Tz,
) -> Vec<Decision> {
    let kept = |s: &Candidate, why: String| Decision {
        id: s.id,
        time_ns: s.time_ns,
        kind: s.kind.clone(),
        keep: true,
        reasons: vec![why],
    };
    let mut out = Vec::with_capacity(snaps.len());
    for s in snaps {
        if PROTECTED_KINDS.contains(&s.kind.as_str()) {
            out.push(kept(s, format!("kind {}: kept until deleted", s.kind)));
        } else if !settings.policies.contains_key(&s.kind) {
            out.push(kept(s, format!("kind {}: no policy", s.kind)));
        }
    }
    for (kind, policy) in &settings.policies {
        let of_kind: Vec<Candidate> = snaps.iter().filter(|s| &s.kind == kind).cloned().collect();
        out.extend(decide(&of_kind, policy, None, now_ns, tz));
    }
    out.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(b.id.cmp(&a.id)));
    if let Some(max) = settings.max_snapshots {
        cap(&mut out, max);
    }
    out
}

/// Removes the oldest kept, policy-governed snapshots beyond `max` (decisions newest first).
pub fn cap(decisions: &mut [Decision], max: usize) {
    let mut kept = 0;
    for d in decisions.iter_mut() {
        if !d.keep || PROTECTED_KINDS.contains(&d.kind.as_str()) {
            continue;
        }
        kept += 1;
        if kept > max {
            d.keep = false;
            d.reasons = vec![format!("beyond max-snapshots {max}")];
        }
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

/// The rules a `forget` applies to the snapshots in its scope.
#[derive(Clone, Copy, Debug)]
pub enum Rules<'a> {
    /// The repository's stored settings.
    Stored(&'a Settings),
    /// A policy given for this run, limited to snapshots of `kind` when given.
    Given {
        policy: &'a Policy,
        kind: Option<&'a str>,
    },
    /// No rule: only named snapshots go (and those beyond the cap).
    NamedOnly,
}

/// What a `forget` is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct Forget<'a> {
    pub rules: Rules<'a>,
    /// Only snapshots with this tag are subject to the rules and the cap; the others are kept.
    pub scope_tag: Option<&'a str>,
    pub max_snapshots: Option<usize>,
    /// Snapshots removed whatever the rules say.
    pub named: &'a [SnapshotId],
}

/// Decides for every snapshot what `forget` does: the rules for those in scope, then the cap,
/// then the named snapshots go. Newest first (with rules given or stored; a run with named
/// snapshots only keeps `snaps` in reverse order).
pub fn decide_forget<Tz: TimeZone>(
    snaps: &[Candidate],
    forget: &Forget,
    now_ns: i64,
    tz: &Tz,
) -> Vec<Decision> {
    let in_scope = |s: &&Candidate| {
        forget
            .scope_tag
            .is_none_or(|t| s.tags.iter().any(|x| x == t))
    };
    let outside: Vec<Decision> = snaps
        .iter()
        .filter(|s| !in_scope(s))
        .map(|s| Decision {
            id: s.id,
            time_ns: s.time_ns,
            kind: s.kind.clone(),
            keep: true,
            reasons: vec!["outside --tag".into()],
        })
        .collect();
    let candidates: Vec<Candidate> = snaps.iter().filter(in_scope).cloned().collect();
    let mut decisions = match forget.rules {
        Rules::Stored(settings) => decide_with_settings(&candidates, settings, now_ns, tz),
        Rules::NamedOnly => candidates
            .iter()
            .rev()
            .map(|c| Decision {
                id: c.id,
                time_ns: c.time_ns,
                kind: c.kind.clone(),
                keep: true,
                reasons: vec!["not named".into()],
            })
            .collect(),
        Rules::Given { policy, kind } => decide(&candidates, policy, kind, now_ns, tz),
    };
    if let Some(max) = forget.max_snapshots {
        cap(&mut decisions, max);
    }
    if !outside.is_empty() {
        decisions.extend(outside);
        decisions.sort_by(|a, b| b.time_ns.cmp(&a.time_ns).then(b.id.cmp(&a.id)));
    }
    for d in &mut decisions {
        if forget.named.contains(&d.id) {
            d.keep = false;
            d.reasons = vec!["named".into()];
        }
    }
    decisions
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
/// (others are kept); restore points are governed only when `kind` names them, manual snapshots
/// never. Bucket boundaries (hours, days, weeks, months, years) are taken in `tz`.
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
        // Restore points pile up with each restore: a policy given for their kind by name
        // rotates them. Manual snapshots are only ever removed by name.
        let named_restore_points = s.kind == RESTORE_POINT_KIND && kind == Some(RESTORE_POINT_KIND);
        if PROTECTED_KINDS.contains(&s.kind.as_str()) && !named_restore_points {
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
    fn stored_settings_per_kind_and_cap() {
        let mut s = hourly(30);
        for c in s.iter_mut().skip(20) {
            c.kind = "daily".into();
        }
        s[0].kind = "manual".into();
        let mut settings = Settings::default();
        settings
            .policies
            .insert("hourly".into(), Policy::parse("keep-last=5").unwrap());
        let d = decide_with_settings(&s, &settings, 0, &Utc);
        // Hourly 1..19: the newest five; daily 20..29: no policy; manual 0: kept.
        let mut want: Vec<u8> = (15..30).collect();
        want.insert(0, 0);
        assert_eq!(kept(&d), want);
        settings.max_snapshots = Some(7);
        let d = decide_with_settings(&s, &settings, 0, &Utc);
        // The seven newest governed ones (all daily), and the manual one.
        let mut want: Vec<u8> = (23..30).collect();
        want.insert(0, 0);
        assert_eq!(kept(&d), want);
        let why = d.iter().find(|d| d.id.0[0] == 22).unwrap();
        assert_eq!(why.reasons, vec!["beyond max-snapshots 7"]);
    }

    #[test]
    fn rules_parse_and_settings_round_trip() {
        let p = Policy::parse("keep-last=24, keep-daily=7,within=2w,keep-tag=v1").unwrap();
        assert_eq!(p.keep_last, Some(24));
        assert_eq!(p.keep_daily, Some(7));
        assert_eq!(p.keep_within_ns, Some(14 * D));
        assert_eq!(p.keep_tags, vec!["v1"]);
        for bad in [
            "",
            "keep-last",
            "keep-last=x",
            "keep-often=3",
            "within=soon",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let b = crate::storage::LocalBackend::new(dir.path());
        assert_eq!(Settings::load(&b, None).unwrap(), Settings::default());
        let mut s = Settings::default();
        s.policies.insert("daily".into(), p);
        s.max_snapshots = Some(100);
        s.store(&b, None).unwrap();
        assert_eq!(Settings::load(&b, None).unwrap(), s);
        std::fs::write(dir.path().join(SETTINGS_NAME), b"garbage").unwrap();
        assert!(Settings::load(&b, None).is_err());
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

    #[test]
    fn forget_scopes_caps_and_names() {
        let mut s = hourly(6);
        for c in &mut s[3..] {
            c.tags = vec!["job=app".into()];
        }
        let policy = Policy {
            keep_last: Some(2),
            ..Policy::default()
        };
        let named = [ChunkId([4; 32])];
        let forget = Forget {
            rules: Rules::Given {
                policy: &policy,
                kind: None,
            },
            scope_tag: Some("job=app"),
            max_snapshots: None,
            named: &named,
        };
        let d = decide_forget(&s, &forget, 0, &Utc);
        // The untagged three are outside the scope and kept; of the tagged ones the newest two
        // are kept, but one of them is named.
        assert_eq!(kept(&d), vec![0, 1, 2, 5]);
        let times: Vec<i64> = d.iter().map(|d| d.time_ns).collect();
        assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
        let of = |n: u8| d.iter().find(|d| d.id.0[0] == n).unwrap();
        assert_eq!(of(0).reasons, vec!["outside --tag"]);
        assert_eq!(of(4).reasons, vec!["named"]);
        assert!(!of(3).keep && of(3).reasons.is_empty());

        // Named snapshots only, with a cap: the rest is kept but for the oldest beyond it.
        let forget = Forget {
            rules: Rules::NamedOnly,
            scope_tag: None,
            max_snapshots: Some(4),
            named: &named,
        };
        let d = decide_forget(&s, &forget, 0, &Utc);
        assert_eq!(kept(&d), vec![2, 3, 5]);
        assert_eq!(
            d.iter().find(|d| d.id.0[0] == 5).unwrap().reasons,
            vec!["not named"]
        );
        assert_eq!(
            d.iter().find(|d| d.id.0[0] == 1).unwrap().reasons,
            vec!["beyond max-snapshots 4"]
        );

        // Stored settings: a kind without a policy is kept.
        let settings = Settings::default();
        let forget = Forget {
            rules: Rules::Stored(&settings),
            scope_tag: None,
            max_snapshots: None,
            named: &[],
        };
        let d = decide_forget(&s, &forget, 0, &Utc);
        assert_eq!(kept(&d), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(d[0].reasons, vec!["kind hourly: no policy"]);
    }
}
