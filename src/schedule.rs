//! When scheduled snapshots run: an interval (`every 15m`), or calendar times in local time
//! (`daily 02:00`, `weekly sun 03:00`, `monthly 1 04:00`). Pure: the next run after any instant,
//! and whether a run was missed while nothing was running.

use crate::error::{Error, Result};
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Weekday};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every so many seconds, counted from the previous run.
    Every(i64),
    /// Each day at this time.
    Daily(NaiveTime),
    /// Each week on this day at this time.
    Weekly(Weekday, NaiveTime),
    /// Each month on this day (1 to 31; in shorter months, the last day) at this time.
    Monthly(u32, NaiveTime),
}

impl Schedule {
    /// Parses `every 15m` (or a bare duration such as `1h`), `hourly`, `daily 02:00`,
    /// `weekly sun 03:00`, `monthly 1 04:00`.
    pub fn parse(s: &str) -> Result<Schedule> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let bad = |why: &str| {
            Error::invalid(format!(
                "schedule {s:?}: {why} (expected `every 15m`, `daily 02:00`, `weekly sun 03:00` \
                 or `monthly 1 04:00`)"
            ))
        };
        let time = |t: &str| {
            NaiveTime::parse_from_str(t, "%H:%M")
                .map_err(|_| bad("a time is HH:MM, 00:00 to 23:59"))
        };
        let every = |d: &str| match crate::retention::parse_duration(d) {
            Some(ns) if ns >= 1_000_000_000 => Ok(Schedule::Every(ns / 1_000_000_000)),
            Some(_) => Err(bad("the shortest interval is 1s")),
            None => Err(bad("not a duration such as 90s, 15m, 1h or 1d")),
        };
        match words.as_slice() {
            ["every" | "interval", d] => every(d),
            ["hourly"] => Ok(Schedule::Every(3600)),
            ["daily"] => Ok(Schedule::Daily(NaiveTime::MIN)),
            ["daily", t] => Ok(Schedule::Daily(time(t)?)),
            ["weekly", day, t] => {
                let day: Weekday = day.parse().map_err(|_| bad("not a day of the week"))?;
                Ok(Schedule::Weekly(day, time(t)?))
            }
            ["monthly", day, t] => match day.parse::<u32>() {
                Ok(d @ 1..=31) => Ok(Schedule::Monthly(d, time(t)?)),
                _ => Err(bad("the day of the month is 1 to 31")),
            },
            [d] if d.starts_with(|c: char| c.is_ascii_digit()) => every(d),
            _ => Err(bad("not understood")),
        }
    }

    /// The first run strictly after `after`.
    pub fn next_after<Tz: TimeZone>(&self, after: &DateTime<Tz>) -> DateTime<Tz> {
        let tz = after.timezone();
        match *self {
            Schedule::Every(secs) => after.clone() + Duration::seconds(secs),
            Schedule::Daily(t) => {
                let mut day = after.date_naive();
                loop {
                    if let Some(at) = local(&tz, day, t)
                        && at > *after
                    {
                        return at;
                    }
                    day = day.succ_opt().unwrap_or(day);
                }
            }
            Schedule::Weekly(wd, t) => {
                let mut day = after.date_naive();
                loop {
                    if day.weekday() == wd
                        && let Some(at) = local(&tz, day, t)
                        && at > *after
                    {
                        return at;
                    }
                    day = day.succ_opt().unwrap_or(day);
                }
            }
            Schedule::Monthly(d, t) => {
                let (mut y, mut m) = (after.year(), after.month());
                loop {
                    let last = last_day(y, m);
                    if let Some(day) = NaiveDate::from_ymd_opt(y, m, d.min(last))
                        && let Some(at) = local(&tz, day, t)
                        && at > *after
                    {
                        return at;
                    }
                    (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                }
            }
        }
    }

    /// Whether a run fell due between the last run and `now` (a run missed during downtime).
    pub fn missed<Tz: TimeZone>(&self, last: &DateTime<Tz>, now: &DateTime<Tz>) -> bool {
        self.next_after(last) <= *now
    }
}

/// `day` at `t` in `tz`; in a DST gap the time does not exist and the next hour is taken, in a
/// DST overlap the earlier of the two instants.
fn local<Tz: TimeZone>(tz: &Tz, day: NaiveDate, t: NaiveTime) -> Option<DateTime<Tz>> {
    let naive = day.and_time(t);
    tz.from_local_datetime(&naive).earliest().or_else(|| {
        tz.from_local_datetime(&(naive + Duration::hours(1)))
            .earliest()
    })
}

fn last_day(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(s) => write!(f, "every {s}s"),
            Schedule::Daily(t) => write!(f, "daily {}", t.format("%H:%M")),
            Schedule::Weekly(d, t) => write!(f, "weekly {} {}", d, t.format("%H:%M")),
            Schedule::Monthly(d, t) => write!(f, "monthly {d} {}", t.format("%H:%M")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(Schedule::parse("every 15m").unwrap(), Schedule::Every(900));
        assert_eq!(Schedule::parse("1h").unwrap(), Schedule::Every(3600));
        assert_eq!(Schedule::parse("hourly").unwrap(), Schedule::Every(3600));
        assert_eq!(
            Schedule::parse("daily 02:00").unwrap(),
            Schedule::Daily(NaiveTime::from_hms_opt(2, 0, 0).unwrap())
        );
        assert_eq!(
            Schedule::parse("weekly sun 03:30").unwrap(),
            Schedule::Weekly(Weekday::Sun, NaiveTime::from_hms_opt(3, 30, 0).unwrap())
        );
        assert_eq!(
            Schedule::parse("monthly 31 04:00").unwrap(),
            Schedule::Monthly(31, NaiveTime::from_hms_opt(4, 0, 0).unwrap())
        );
        for bad in [
            "",
            "daily 25:00",
            "weekly someday 03:00",
            "monthly 0 04:00",
            "monthly 32 04:00",
            "every 0s",
            "every soon",
            "fortnightly",
        ] {
            let e = Schedule::parse(bad).unwrap_err().to_string();
            assert!(e.contains("schedule"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn next_runs() {
        let daily = Schedule::parse("daily 02:00").unwrap();
        assert_eq!(
            daily.next_after(&at("2026-11-20T01:59:00Z")),
            at("2026-11-20T02:00:00Z")
        );
        assert_eq!(
            daily.next_after(&at("2026-11-20T02:00:00Z")),
            at("2026-11-21T02:00:00Z")
        );
        // 2026-11-22 is a Sunday.
        let weekly = Schedule::parse("weekly sun 03:00").unwrap();
        assert_eq!(
            weekly.next_after(&at("2026-11-20T12:00:00Z")),
            at("2026-11-22T03:00:00Z")
        );
        assert_eq!(
            weekly.next_after(&at("2026-11-22T03:00:00Z")),
            at("2026-11-29T03:00:00Z")
        );
        // Day 31 in a 30-day month is its last day; February of a leap year has 29.
        let monthly = Schedule::parse("monthly 31 04:00").unwrap();
        assert_eq!(
            monthly.next_after(&at("2026-11-01T00:00:00Z")),
            at("2026-11-30T04:00:00Z")
        );
        assert_eq!(
            monthly.next_after(&at("2028-02-01T00:00:00Z")),
            at("2028-02-29T04:00:00Z")
        );
        assert_eq!(
            monthly.next_after(&at("2026-12-31T05:00:00Z")),
            at("2027-01-31T04:00:00Z")
        );
        let every = Schedule::parse("every 90s").unwrap();
        assert_eq!(
            every.next_after(&at("2026-11-20T00:00:00Z")),
            at("2026-11-20T00:01:30Z")
        );
    }

    #[test]
    fn missed_runs() {
        let daily = Schedule::parse("daily 02:00").unwrap();
        // Down from 01:00 to 03:00: the 02:00 run was missed.
        assert!(daily.missed(&at("2026-11-20T01:00:00Z"), &at("2026-11-20T03:00:00Z")));
        assert!(!daily.missed(&at("2026-11-20T02:00:00Z"), &at("2026-11-21T01:59:00Z")));
        let every = Schedule::parse("every 1h").unwrap();
        assert!(every.missed(&at("2026-11-20T01:00:00Z"), &at("2026-11-20T02:00:00Z")));
        assert!(!every.missed(&at("2026-11-20T01:00:00Z"), &at("2026-11-20T01:59:59Z")));
    }
}
