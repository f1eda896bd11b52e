//! Retention that keeps recovery possible: which archived WAL files and restore point records
//! no retained base backup needs any more, and whether the archive still holds every segment
//! the retained base backups need.
//!
//! A recovery starts from a base backup and replays the archive from the segment holding the
//! backup's start onwards. So once base backups exist, WAL below the oldest one's start segment
//! can never be replayed, and a restore point before that start can never be reached: forget
//! and delete remove those snapshots together with the ones they were asked to remove
//! ([`Reclaimable`]), and gc reclaims their space as for any other. Timeline history files are
//! always kept: they are tiny, and a recovery onto a later timeline reads every one of them.
//! Without any base backup nothing is reclaimable: the archive may be waiting for its first.
//!
//! Segment numbers are compared across timelines: a segment of timeline 2 below the start of a
//! base backup on timeline 1 is as useless as one of timeline 1.
//!
//! [`ArchiveView::gaps`] is the other half, for `verify`: from each base backup's start segment
//! to the newest archived segment, every segment must be there, following the newest
//! timeline's history across a switch.

use super::base::{FoundBase, bases_in};
use super::lsn::{Lsn, parse_segment_name, segment_name};
use crate::error::{Error, Result};
use crate::id::SnapshotId;
use crate::manifest::Manifest;
use crate::repo::Repo;
use crate::snapshots::{PG_POINT, PG_WAL, Snapshot};
use std::collections::{BTreeSet, HashSet};

/// The largest timeline history file read (one short line per earlier timeline).
const HISTORY_MAX: u64 = 1 << 20;

/// What the retention rule for the WAL archive would remove.
#[derive(Clone, Debug, Default)]
pub struct Reclaimable {
    /// The retained base backup with the oldest start, which decided; `None` when no base
    /// backup is retained (and then nothing is reclaimable).
    pub oldest: Option<FoundBase>,
    /// Archived WAL files (segments, `.partial` segments, `.backup` labels) below its start
    /// segment: snapshot and file name, in name order.
    pub wal: Vec<(SnapshotId, String)>,
    /// Restore point records before its start: snapshot and point name.
    pub points: Vec<(SnapshotId, String)>,
}

impl Reclaimable {
    /// Every snapshot to remove.
    pub fn ids(&self) -> impl Iterator<Item = SnapshotId> + '_ {
        self.wal.iter().chain(&self.points).map(|(id, _)| *id)
    }

    pub fn is_empty(&self) -> bool {
        self.wal.is_empty() && self.points.is_empty()
    }

    /// The first segment the oldest retained base backup needs.
    pub fn start_segment(&self) -> Option<String> {
        self.oldest.as_ref().map(|b| b.info.start_segment())
    }

    /// One line per kind of snapshot removed, such as "removed 4 archived WAL files older than
    /// the oldest base backup (start 000000010000000000000005)"; `verb` is "removed" or "would
    /// remove".
    pub fn describe(&self, verb: &str) -> Vec<String> {
        let Some(start) = self.start_segment() else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        if !self.wal.is_empty() {
            lines.push(format!(
                "{verb} {} archived WAL files older than the oldest base backup (start {start})",
                self.wal.len()
            ));
        }
        if !self.points.is_empty() {
            lines.push(format!(
                "{verb} {} restore point records from before the oldest base backup (start {start})",
                self.points.len()
            ));
        }
        lines
    }
}

/// What the snapshots of a repository say about its WAL archive: the archived files, the
/// restore point records and the base backups.
#[derive(Clone, Debug, Default)]
pub struct ArchiveView {
    wal: Vec<(SnapshotId, String)>,
    /// Restore point records, with their position when the record is readable.
    points: Vec<(SnapshotId, String, Option<Lsn>)>,
    bases: Vec<FoundBase>,
}

impl ArchiveView {
    /// The view of `snaps`.
    pub fn of(snaps: &[Snapshot]) -> Result<ArchiveView> {
        let mut view = ArchiveView::default();
        for s in snaps {
            view.note(&s.id, &s.manifest)?;
        }
        Ok(view)
    }

    /// Takes note of snapshot `id`. Fails (noting nothing of it) when it holds a base backup
    /// whose recorded details cannot be read.
    pub fn note(&mut self, id: &SnapshotId, m: &Manifest) -> Result<()> {
        match m.kind.as_str() {
            PG_WAL => {
                if let Some(name) = &m.name {
                    self.wal.push((*id, name.clone()));
                }
            }
            PG_POINT => {
                let lsn = super::point::recorded_lsn(id, m).ok();
                let name = m.name.clone().unwrap_or_default();
                self.points.push((*id, name, lsn));
            }
            _ => self.bases.extend(bases_in(id, m)?),
        }
        Ok(())
    }

    /// The archived WAL files and restore point records that no base backup outside
    /// `removing` needs (none of them in `removing` already).
    pub fn reclaimable(&self, removing: &HashSet<SnapshotId>) -> Reclaimable {
        let oldest = self
            .bases
            .iter()
            .filter(|b| !removing.contains(&b.snapshot))
            .min_by_key(|b| (b.info.start_lsn, b.snapshot));
        let Some(oldest) = oldest else {
            return Reclaimable::default();
        };
        let seg_size = oldest.info.seg_size;
        let start = oldest.info.start_lsn.segment(seg_size);
        let mut wal: Vec<(SnapshotId, String)> = self
            .wal
            .iter()
            .filter(|(id, name)| {
                !removing.contains(id) && segment_of(name, seg_size).is_some_and(|s| s < start)
            })
            .cloned()
            .collect();
        wal.sort_by(|a, b| a.1.cmp(&b.1));
        let points = self
            .points
            .iter()
            .filter(|(id, _, lsn)| {
                !removing.contains(id) && lsn.is_some_and(|l| l < oldest.info.start_lsn)
            })
            .map(|(id, name, _)| (*id, name.clone()))
            .collect();
        Reclaimable {
            oldest: Some(oldest.clone()),
            wal,
            points,
        }
    }

    /// The gaps in the archive that keep a base backup from being recovered to the newest
    /// archived segment: one message per base backup, naming the first missing file.
    pub fn gaps(&self, repo: &Repo) -> Vec<String> {
        let mut out = Vec::new();
        // Files in the spool are in the repository too, stored at the next archive.
        let spooled = super::spool::names(repo).unwrap_or_else(|e| {
            out.push(format!("WAL archive: the spool cannot be listed: {e}"));
            Vec::new()
        });
        let names: BTreeSet<&str> = self
            .wal
            .iter()
            .map(|(_, n)| n.as_str())
            .chain(spooled.iter().map(String::as_str))
            .collect();
        for base in &self.bases {
            let newest = newest_segment(&names, base.info.seg_size);
            let history = match newest {
                Some((tli, _)) if tli > base.info.timeline => {
                    match read_history(repo, tli, &names) {
                        Ok(h) => h,
                        Err(e) => {
                            out.push(format!(
                                "WAL archive: {e}: base backup {} of snapshot {} cannot be \
                                 followed onto timeline {tli}",
                                base.name,
                                base.snapshot.short()
                            ));
                            continue;
                        }
                    }
                }
                _ => Vec::new(),
            };
            if let Err(gap) = first_missing(base, &names, &history) {
                out.push(format!(
                    "WAL archive: {gap}: base backup {} of snapshot {} cannot be recovered \
                     past {}",
                    base.name,
                    base.snapshot.short(),
                    gap.from
                ));
            }
        }
        out
    }
}

/// The archived WAL files and restore point records that no retained base backup needs, for
/// the snapshots of `repo` as they are now.
pub fn reclaimable(repo: &Repo) -> Result<Reclaimable> {
    let snaps = crate::snapshots::list(repo)?;
    Ok(ArchiveView::of(&snaps)?.reclaimable(&HashSet::new()))
}

/// The segment number of an archived file: a segment, a `.partial` segment or a `.backup`
/// label (named after the segment it starts in); `None` for a history file or any other name.
fn segment_of(name: &str, seg_size: u64) -> Option<u64> {
    let (seg, rest) = name.split_once('.').unwrap_or((name, ""));
    let known = rest.is_empty() || rest == "partial" || rest.ends_with(".backup");
    known
        .then(|| parse_segment_name(seg, seg_size))
        .flatten()
        .map(|(_, n)| n)
}

/// The newest archived segment: the highest timeline with a whole segment, and its highest.
fn newest_segment(names: &BTreeSet<&str>, seg_size: u64) -> Option<(u32, u64)> {
    names
        .iter()
        .filter_map(|n| parse_segment_name(n, seg_size))
        .max()
}

/// The entries of timeline `tli`'s history file in the archive: each earlier timeline of its
/// ancestry, oldest first, with the position where the next one branched off.
fn read_history(repo: &Repo, tli: u32, names: &BTreeSet<&str>) -> Result<Vec<(u32, Lsn)>> {
    let name = format!("{tli:08X}.history");
    let missing = || Error::not_found(format!("{name} is missing"));
    if !names.contains(name.as_str()) {
        return Err(missing());
    }
    let bytes = super::archive::read_small(repo, &name, HISTORY_MAX)?.ok_or_else(missing)?;
    parse_history(&String::from_utf8_lossy(&bytes), tli)
        .map_err(|e| Error::corrupt(format!("{name} cannot be read: {e}")))
}

/// Reads a timeline history file (`parentTLI<tab>switchpoint<tab>reason` lines, `#` comments)
/// of timeline `tli`: its timelines must rise, each below `tli`, and so must the positions.
pub fn parse_history(text: &str, tli: u32) -> std::result::Result<Vec<(u32, Lsn)>, String> {
    let mut out: Vec<(u32, Lsn)> = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let parent = fields.next().and_then(|f| f.parse::<u32>().ok());
        let at = fields.next().and_then(|f| Lsn::parse(f).ok());
        let (Some(parent), Some(at)) = (parent, at) else {
            return Err(format!(
                "line {}: expected a timeline and a position",
                no + 1
            ));
        };
        let rises = out.last().is_none_or(|&(t, l)| parent > t && at >= l);
        if !rises || parent >= tli {
            return Err(format!(
                "line {}: timeline {parent} at {at} does not follow the lines before it",
                no + 1
            ));
        }
        out.push((parent, at));
    }
    Ok(out)
}

/// A segment a recovery needs and the archive does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// The file a recovery would ask for.
    pub name: String,
    /// Where that segment begins: replay cannot go past it.
    pub from: Lsn,
    /// Why no file is expected at all (the base backup is not on the newest timeline's path).
    pub reason: Option<String>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(r) => write!(f, "{r}"),
            None => write!(f, "{} is missing", self.name),
        }
    }
}

/// Checks that the archive (`names`) holds every segment from `base`'s start to the newest
/// archived segment. `history` is the newest timeline's history (empty when it is the base's
/// timeline): its segments are expected up to each switch, then the next timeline's. The
/// segment holding a switch exists on both timelines (the old one's perhaps only as
/// `.partial`): either will do.
fn first_missing(
    base: &FoundBase,
    names: &BTreeSet<&str>,
    history: &[(u32, Lsn)],
) -> std::result::Result<(), Missing> {
    let seg = base.info.seg_size;
    let start = base.info.start_lsn.segment(seg);
    let Some((newest_tli, end)) = newest_segment(names, seg) else {
        return Ok(());
    };
    if newest_tli < base.info.timeline {
        // Nothing of the base's own timeline archived yet: no gap to see.
        return Ok(());
    }
    // The timelines a recovery follows, each with its first and last segment.
    let mut path: Vec<(u32, u64, Option<u64>)> = Vec::new();
    let mut begin = 0;
    for &(tli, at) in history {
        path.push((tli, begin, Some(at.segment(seg))));
        begin = at.segment(seg);
    }
    path.push((newest_tli, begin, None));
    let Some(from) = path.iter().position(|p| p.0 == base.info.timeline) else {
        return Err(Missing {
            name: segment_name(newest_tli, start, seg),
            from: base.info.start_lsn,
            reason: Some(format!(
                "timeline {} is not in the history of the newest timeline {newest_tli}",
                base.info.timeline
            )),
        });
    };
    if let Some(&(tli, at)) = history.get(from)
        && base.info.start_lsn > at
    {
        return Err(Missing {
            name: segment_name(newest_tli, start, seg),
            from: base.info.start_lsn,
            reason: Some(format!(
                "timeline {newest_tli} branched off timeline {tli} at {at}, before the base \
                 backup starts"
            )),
        });
    }
    let path = &path[from..];
    let on_path = |tli: u32, s: u64, partial: bool| {
        path.iter().any(|&(t, first, last)| {
            t == tli && first <= s && last.is_none_or(|l| s <= l) && (!partial || last == Some(s))
        })
    };
    let mut have = BTreeSet::new();
    for name in names {
        let (seg_name, partial) = match name.strip_suffix(".partial") {
            Some(n) => (n, true),
            None => (*name, false),
        };
        if let Some((tli, s)) = parse_segment_name(seg_name, seg)
            && (start..=end).contains(&s)
            && on_path(tli, s, partial)
        {
            have.insert(s);
        }
    }
    let mut next = start;
    for s in have {
        if s != next {
            break;
        }
        next += 1;
    }
    if next > end {
        return Ok(());
    }
    // The newest timeline that holds it is where a recovery looks first.
    let tli = path
        .iter()
        .rev()
        .find(|&&(_, first, last)| first <= next && last.is_none_or(|l| next <= l))
        .map_or(newest_tli, |p| p.0);
    Err(Missing {
        name: segment_name(tli, next, seg),
        from: Lsn(next.saturating_mul(seg)),
        reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::base::BaseInfo;

    const SEG: u64 = 16 << 20;

    fn base(n: u8, timeline: u32, start: &str) -> FoundBase {
        FoundBase {
            snapshot: crate::id::ChunkId([n; 32]),
            name: "pgdata".into(),
            info: BaseInfo {
                start_lsn: Lsn::parse(start).unwrap(),
                stop_lsn: Lsn::parse(start).unwrap(),
                timeline,
                seg_size: SEG,
                server_version: "15".into(),
                start_time: String::new(),
                stop_time_ns: 0,
            },
        }
    }

    fn id(n: u8) -> SnapshotId {
        crate::id::ChunkId([n; 32])
    }

    fn seg(tli: u32, n: u64) -> String {
        segment_name(tli, n, SEG)
    }

    fn view(bases: Vec<FoundBase>, names: &[String], points: &[(u8, &str)]) -> ArchiveView {
        ArchiveView {
            wal: names
                .iter()
                .enumerate()
                .map(|(i, n)| (id(100 + i as u8), n.clone()))
                .collect(),
            points: points
                .iter()
                .map(|&(n, l)| (id(n), format!("p{n}"), Lsn::parse(l).ok()))
                .collect(),
            bases,
        }
    }

    fn set(names: &[String]) -> BTreeSet<&str> {
        names.iter().map(String::as_str).collect()
    }

    fn names_of(r: &Reclaimable) -> Vec<&str> {
        r.wal.iter().map(|(_, n)| n.as_str()).collect()
    }

    #[test]
    fn wal_below_the_oldest_retained_base_is_reclaimable() {
        let mut names: Vec<String> = (1..=9).map(|n| seg(1, n)).collect();
        names.push("00000001.history".into());
        names.push("00000002.history".into());
        names.push(format!("{}.partial", seg(1, 3)));
        names.push(format!("{}.00000028.backup", seg(1, 3)));
        names.push(format!("{}.00000028.backup", seg(1, 5)));
        names.push(seg(2, 4));
        let v = view(
            vec![base(1, 1, "0/5000028"), base(2, 1, "0/8000028")],
            &names,
            &[(50, "0/4FFFFFF"), (51, "0/5000028"), (52, "bad")],
        );
        let r = v.reclaimable(&HashSet::new());
        assert_eq!(r.start_segment().unwrap(), seg(1, 5));
        let mut want = vec![
            seg(1, 1),
            seg(1, 2),
            seg(1, 3),
            format!("{}.00000028.backup", seg(1, 3)),
            format!("{}.partial", seg(1, 3)),
            seg(1, 4),
            seg(2, 4),
        ];
        want.sort();
        assert_eq!(names_of(&r), want);
        assert_eq!(r.points.len(), 1, "only the point before the start goes");
        assert_eq!(r.points[0].0, id(50));
        assert_eq!(
            r.describe("removed")[0],
            format!(
                "removed 7 archived WAL files older than the oldest base backup (start {})",
                seg(1, 5)
            )
        );

        // The oldest base removed too: the next one decides.
        let r = v.reclaimable(&[id(1)].into_iter().collect());
        assert_eq!(r.start_segment().unwrap(), seg(1, 8));
        assert!(names_of(&r).contains(&seg(1, 7).as_str()));
        assert!(!names_of(&r).contains(&seg(1, 8).as_str()));
        assert!(names_of(&r).iter().all(|n| !n.ends_with(".history")));

        // No base backup retained: everything stays.
        let r = v.reclaimable(&[id(1), id(2)].into_iter().collect());
        assert!(r.is_empty() && r.oldest.is_none() && r.describe("removed").is_empty());
        // What is being removed already is not counted again.
        let r = v.reclaimable(&[id(100)].into_iter().collect());
        assert!(!names_of(&r).contains(&seg(1, 1).as_str()));
    }

    #[test]
    fn one_timeline_without_gaps_passes_and_a_gap_is_named() {
        let b = base(1, 1, "0/3000028");
        let mut names: Vec<String> = (1..=9).map(|n| seg(1, n)).collect();
        assert_eq!(first_missing(&b, &set(&names), &[]), Ok(()));
        // Segments before the start are not needed.
        names.retain(|n| *n != seg(1, 2));
        assert_eq!(first_missing(&b, &set(&names), &[]), Ok(()));
        names.retain(|n| *n != seg(1, 7));
        let gap = first_missing(&b, &set(&names), &[]).unwrap_err();
        assert_eq!(gap.name, "000000010000000000000007");
        assert_eq!(gap.from.to_string(), "0/7000000");
        assert_eq!(gap.to_string(), "000000010000000000000007 is missing");
        // The start segment itself missing.
        names.retain(|n| *n != seg(1, 3));
        assert_eq!(
            first_missing(&b, &set(&names), &[]).unwrap_err().name,
            seg(1, 3)
        );
        // An archive that has not reached the base yet has no gap.
        let names = [seg(1, 1), seg(1, 2)];
        assert_eq!(first_missing(&b, &set(&names), &[]), Ok(()));
    }

    #[test]
    fn a_timeline_switch_is_followed() {
        let b = base(1, 1, "0/3000028");
        // Timeline 2 branched off at 0/6000100: segment 6 on both, then timeline 2 only.
        let history = parse_history("1\t0/6000100\tno recovery target specified\n", 2).unwrap();
        assert_eq!(history, vec![(1, Lsn(0x600_0100))]);
        let mut names: Vec<String> = (1..=6).map(|n| seg(1, n)).collect();
        names.extend((6..=9).map(|n| seg(2, n)));
        names.push("00000002.history".into());
        assert_eq!(first_missing(&b, &set(&names), &history), Ok(()));
        // Either copy of the switch segment will do, the old one as .partial too.
        let without = |names: &[String], gone: &str| {
            names
                .iter()
                .filter(|n| *n != gone)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            first_missing(&b, &set(&without(&names, &seg(1, 6))), &history),
            Ok(())
        );
        let mut partial = without(&names, &seg(2, 6));
        assert_eq!(first_missing(&b, &set(&partial), &history), Ok(()));
        partial.retain(|n| *n != seg(1, 6));
        partial.push(format!("{}.partial", seg(1, 6)));
        assert_eq!(first_missing(&b, &set(&partial), &history), Ok(()));
        // Neither: named on the new timeline, where a recovery looks first.
        let both = without(&without(&names, &seg(2, 6)), &seg(1, 6));
        let gap = first_missing(&b, &set(&both), &history).unwrap_err();
        assert_eq!(gap.name, seg(2, 6));
        // After the switch only timeline 2 counts: timeline 1's segment 8 does not fill a gap.
        let mut old_only = without(&names, &seg(2, 8));
        old_only.push(seg(1, 8));
        let gap = first_missing(&b, &set(&old_only), &history).unwrap_err();
        assert_eq!(gap.name, seg(2, 8));
        // Before the switch, timeline 2's copies are not there to stand in.
        let gap = first_missing(&b, &set(&without(&names, &seg(1, 4))), &history).unwrap_err();
        assert_eq!(gap.name, seg(1, 4));
        // A base backup taken on timeline 1 after timeline 2 branched off.
        let late = base(2, 1, "0/7000028");
        let gap = first_missing(&late, &set(&names), &history).unwrap_err();
        assert!(gap.to_string().contains("branched off"), "{gap}");
        // A base on timeline 2 needs no history.
        let b2 = base(3, 2, "0/7000028");
        assert_eq!(first_missing(&b2, &set(&names), &[]), Ok(()));
    }

    #[test]
    fn history_files_are_read_with_care() {
        let text = "1\t0/3000000\tno recovery target specified\n\n# note\n\
                    2\t0/5000100\tat restore point \"x\"\n";
        assert_eq!(
            parse_history(text, 3).unwrap(),
            vec![(1, Lsn(0x300_0000)), (2, Lsn(0x500_0100))]
        );
        for bad in [
            "x\t0/1\n",
            "1\tnope\n",
            "2\t0/5\n1\t0/6\n",
            "3\t0/5\n",
            "1\t0/5\n2\t0/4\n",
        ] {
            assert!(parse_history(bad, 3).is_err(), "{bad:?}");
        }
    }
}
