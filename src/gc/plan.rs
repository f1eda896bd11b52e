//! gc's plan: what it deletes, rewrites and keeps, and why, decided from the index's pack-use
//! rows alone (no pack is read). A dry run prints it; [`super::execute`] carries it out.

use crate::error::{Error, Result};
use crate::index::{IndexReader, META_NEXT_PACK, PackInfo, PackUse};
use crate::repo::Repo;
use std::collections::{HashMap, HashSet};

/// What gc does with one pack the index lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fate {
    /// No blob in it is referenced: the file goes.
    Delete,
    /// Its live blobs move to new packs, then the file goes.
    Rewrite,
    /// Kept, with its unreferenced blobs dropped from the index.
    Trim,
}

/// A pack gc deletes, rewrites or trims.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PlannedPack {
    /// The pack's number in the index, and its file.
    pub pack: u32,
    pub name: String,
    pub fate: Fate,
    /// Bytes of the file.
    pub bytes: u64,
    /// Blobs its trailer lists, of them the ones the index places here, and of those the
    /// referenced ones.
    pub blobs: u32,
    pub indexed: u32,
    pub live_blobs: u32,
    /// Bytes holding frames, and the live blobs' share of them.
    pub frame_bytes: u64,
    pub live_bytes: u64,
    pub reason: String,
    #[serde(skip)]
    pub(super) info: PackInfo,
}

/// A pack file the index does not know (left by an interrupted backup or gc): it is deleted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UnknownPack {
    pub name: String,
    pub bytes: u64,
}

/// Everything gc decides before it changes anything. Sizes after gc are estimates: rewritten
/// packs are counted by their live frame bytes, without the new packs' headers and trailers.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GcPlan {
    /// Rewrite packs whose unused bytes exceed this fraction of their live bytes.
    pub max_unused: f64,
    /// Snapshots added since the last count whose references were counted while planning.
    pub counted_snapshots: u64,
    pub snapshots: u64,
    pub live_blobs: u64,
    pub dead_blobs: u64,
    /// Packs the index lists, and the bytes of their files and of the unknown pack files.
    pub packs_before: u64,
    pub bytes_before: u64,
    /// The packs deleted, rewritten or trimmed, by number.
    pub packs: Vec<PlannedPack>,
    /// Packs that stay as they are.
    pub packs_kept: u64,
    pub unknown_packs: Vec<UnknownPack>,
    /// Frame bytes, and live frame bytes, of the packs that stay (trimmed ones included).
    pub kept_frame_bytes: u64,
    pub kept_live_bytes: u64,
    /// Live frame bytes of the packs being rewritten: what the new packs hold.
    pub rewritten_live_bytes: u64,
    /// Bytes of the files deleted (deleted and rewritten packs, unknown pack files), and what
    /// is freed once the rewritten blobs are written again.
    pub bytes_removed: u64,
    pub bytes_freed: u64,
    /// Readers (restore, verify...) running when a dry run planned (a real gc lists them once,
    /// after its commit: while any runs then, the files stay for the next gc, since the index
    /// no longer names them).
    pub readers: u64,
    /// The index's next pack number when planned: a plan is carried out only on that index.
    #[serde(skip)]
    pub(super) next_pack: u64,
}

impl GcPlan {
    /// The packs planned for `fate`.
    pub fn with_fate(&self, fate: Fate) -> impl Iterator<Item = &PlannedPack> {
        self.packs.iter().filter(move |p| p.fate == fate)
    }

    /// The pack files the plan removes: deleted and rewritten packs, and unknown files.
    pub fn files_to_delete(&self) -> impl Iterator<Item = &str> {
        self.packs
            .iter()
            .filter(|p| p.fate != Fate::Trim)
            .map(|p| p.name.as_str())
            .chain(self.unknown_packs.iter().map(|u| u.name.as_str()))
    }
}

/// Plans a gc of `repo`: counts the references of snapshots added since the last count (so
/// every pack's use is known; bookkeeping, done in a dry run too), then decides every pack
/// from its use row, and lists the pack files the index does not know.
pub fn plan(repo: &Repo, max_unused: f64) -> Result<GcPlan> {
    if !(0.0..=1.0).contains(&max_unused) {
        return Err(Error::invalid("--max-unused must be between 0% and 100%"));
    }
    repo.ensure_current()?;
    refuse_behind_snapshot_files(repo)?;
    let settle = repo.index.write()?;
    let counted_snapshots = crate::refs::settle(repo.backend.as_ref(), repo.keys(), &settle, &[])?;
    settle.commit()?;
    let txn = repo.index.read()?;
    let index = IndexReader::new(&txn)?;
    let snapshots = crate::index::snapshot_ids(&txn)?.len() as u64;
    let packs = index.packs()?;
    let usage = crate::index::pack_uses(&txn)?;
    let mut plan = plan_packs(&packs, &usage, max_unused)?;
    plan.counted_snapshots = counted_snapshots;
    plan.snapshots = snapshots;
    plan.next_pack = crate::index::meta(&txn, META_NEXT_PACK)?.unwrap_or(0);

    let known: HashSet<String> = packs.iter().map(|(_, info)| info.object_name()).collect();
    let unknown: Vec<UnknownPack> = repo
        .backend
        .list("packs")?
        .into_iter()
        .filter(|n| n.ends_with(".pack") && !known.contains(n))
        .map(|name| UnknownPack {
            bytes: repo.backend.size(&name).unwrap_or(0),
            name,
        })
        .collect();
    plan.add_unknown(unknown);
    Ok(plan)
}

/// Refuses to collect garbage while a snapshot has a manifest file but the index does not list
/// it (an index copied back from before that backup, or replaced under a running writer): its
/// packs would look like garbage. `strata repair index` rebuilds the index from the files.
fn refuse_behind_snapshot_files(repo: &Repo) -> Result<()> {
    let txn = repo.index.read()?;
    let indexed: HashSet<String> = crate::index::snapshot_ids(&txn)?
        .iter()
        .map(crate::manifest::object_name)
        .collect();
    let unlisted: Vec<String> = repo
        .backend
        .list("snapshots")?
        .into_iter()
        .filter(|n| !indexed.contains(n))
        .collect();
    match unlisted.first() {
        None => Ok(()),
        Some(first) => Err(Error::corrupt(format!(
            "the index does not list {} snapshot file(s) ({first}{}): it is behind the \
             repository, and gc would take their data for garbage; nothing was removed. Run \
             `strata repair index`, then gc again",
            unlisted.len(),
            if unlisted.len() > 1 { ", ..." } else { "" }
        ))),
    }
}

/// Plans every pack from its row in `pack_use` alone (no pack is read): a pack with no live blob
/// is deleted; one whose unused frame bytes exceed `max_unused` times its live ones is
/// rewritten; a kept one with unreferenced index entries is trimmed.
fn plan_packs(
    packs: &[(u32, PackInfo)],
    usage: &HashMap<u32, PackUse>,
    max_unused: f64,
) -> Result<GcPlan> {
    let mut out = GcPlan {
        max_unused,
        packs_before: packs.len() as u64,
        ..GcPlan::default()
    };
    for (no, info) in packs {
        let u = usage.get(no).ok_or_else(|| {
            Error::corrupt(format!(
                "the index has no usage record for pack #{no}; run `strata repair index`"
            ))
        })?;
        out.bytes_before += info.size;
        out.live_blobs += u.live_blobs as u64;
        out.dead_blobs += u.indexed.saturating_sub(u.live_blobs) as u64;
        let frames = frame_bytes(info.size, info.blobs);
        // (Shares are rounded down per blob; a pack whose every blob is live is live whole.)
        let live = if u.live_blobs == info.blobs {
            frames
        } else {
            u.live_bytes.min(frames)
        };
        // Unused bytes may be at most `max_unused` times the live ones, so that after gc the
        // packs hold at most live x (1 + max_unused) frame bytes.
        let unused = frames - live;
        let allowed = percent(max_unused);
        let (fate, reason) = if u.live_blobs == 0 {
            (Fate::Delete, "no blob in it is referenced".to_string())
        } else if u.live_blobs < info.blobs && unused as f64 > max_unused * live as f64 {
            out.rewritten_live_bytes += live;
            let reason = format!(
                "{unused} unused frame bytes, more than {allowed}% of its {live} live ones"
            );
            (Fate::Rewrite, reason)
        } else {
            out.kept_frame_bytes += frames;
            out.kept_live_bytes += live;
            if u.indexed <= u.live_blobs {
                out.packs_kept += 1;
                continue;
            }
            let reason = format!(
                "kept ({unused} unused frame bytes, within {allowed}% of its {live} live ones); \
                 its {} unreferenced blobs leave the index",
                u.indexed - u.live_blobs
            );
            (Fate::Trim, reason)
        };
        out.packs.push(PlannedPack {
            pack: *no,
            name: info.object_name(),
            fate,
            bytes: info.size,
            blobs: info.blobs,
            indexed: u.indexed,
            live_blobs: u.live_blobs,
            frame_bytes: frames,
            live_bytes: live,
            reason,
            info: *info,
        });
    }
    out.packs.sort_by_key(|p| p.pack);
    out.add_unknown(Vec::new());
    Ok(out)
}

impl GcPlan {
    /// Adds pack files the index does not know (deleted too), and sums up what is removed.
    fn add_unknown(&mut self, unknown: Vec<UnknownPack>) {
        self.bytes_before += unknown.iter().map(|u| u.bytes).sum::<u64>();
        self.unknown_packs.extend(unknown);
        self.bytes_removed = self
            .packs
            .iter()
            .filter(|p| p.fate != Fate::Trim)
            .map(|p| p.bytes)
            .chain(self.unknown_packs.iter().map(|u| u.bytes))
            .sum();
        self.bytes_freed = self.bytes_removed - self.rewritten_live_bytes;
    }
}

/// A fraction as a percentage, without a long tail of digits (0.125 is "12.5").
fn percent(fraction: f64) -> String {
    format!("{}", (fraction * 1000.0).round() / 10.0)
}

/// Bytes of a pack that hold frames: the file without header, trailer and footer.
pub(super) fn frame_bytes(size: u64, blobs: u32) -> u64 {
    let overhead = (crate::pack::HEADER_LEN + crate::pack::FOOTER_LEN) as u64
        + blobs as u64 * crate::pack::ENTRY_LEN as u64;
    size.saturating_sub(overhead)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ChunkId;
    use std::collections::BTreeMap;

    /// A pack of `blobs` blobs with `frames` frame bytes.
    fn pack(no: u32, blobs: u32, frames: u64) -> (u32, PackInfo) {
        let overhead = (crate::pack::HEADER_LEN + crate::pack::FOOTER_LEN) as u64
            + blobs as u64 * crate::pack::ENTRY_LEN as u64;
        (
            no,
            PackInfo {
                id: ChunkId([no as u8; 32]),
                size: frames + overhead,
                blobs,
            },
        )
    }

    fn usage(indexed: u32, live_blobs: u32, live_bytes: u64) -> PackUse {
        PackUse {
            indexed,
            live_blobs,
            live_bytes,
        }
    }

    fn fates(plan: &GcPlan) -> BTreeMap<u32, Fate> {
        plan.packs.iter().map(|p| (p.pack, p.fate)).collect()
    }

    #[test]
    fn each_pack_is_planned_from_its_usage_row() {
        let packs = vec![
            pack(1, 10, 1000), // all live: stays
            pack(2, 10, 1000), // nothing live: deleted
            pack(3, 10, 1000), // 30% unused of 70% live, over 10%: rewritten
            pack(4, 10, 1000), // 5% unused: stays, its unreferenced entries trimmed
            pack(5, 10, 1000), // all live, one stale entry gone already: stays untouched
        ];
        let rows: HashMap<u32, PackUse> = [
            (1, usage(10, 10, 990)),
            (2, usage(10, 0, 0)),
            (3, usage(10, 7, 700)),
            (4, usage(10, 9, 952)),
            (5, usage(9, 9, 1000)),
        ]
        .into_iter()
        .collect();
        let p = plan_packs(&packs, &rows, 0.1).unwrap();
        let want: BTreeMap<u32, Fate> = [(2, Fate::Delete), (3, Fate::Rewrite), (4, Fate::Trim)]
            .into_iter()
            .collect();
        assert_eq!(fates(&p), want);
        // Pack 1 is live whole (its rounded-down shares do not count); pack 5 has 9 of 10
        // blobs live, at most its frames.
        assert_eq!(p.kept_frame_bytes, 3000);
        assert_eq!(p.kept_live_bytes, 1000 + 952 + 1000);
        assert_eq!(p.rewritten_live_bytes, 700);
        assert_eq!(p.packs_kept, 2);
        assert_eq!(p.live_blobs, 10 + 7 + 9 + 9);
        assert_eq!(p.dead_blobs, 10 + 3 + 1);
        assert_eq!(
            p.bytes_before,
            packs.iter().map(|(_, i)| i.size).sum::<u64>()
        );

        // With all unused space allowed, the partly used pack stays (trimmed); a pack with no
        // live blob goes whatever the setting.
        let p = plan_packs(&packs, &rows, 1.0).unwrap();
        assert_eq!(fates(&p).get(&3), Some(&Fate::Trim));
        assert_eq!(fates(&p).get(&2), Some(&Fate::Delete));
        // With none allowed, every pack with an unused byte is rewritten.
        let p = plan_packs(&packs, &rows, 0.0).unwrap();
        assert_eq!(fates(&p).get(&4), Some(&Fate::Rewrite));
    }

    #[test]
    fn a_pack_without_a_usage_row_stops_the_plan() {
        let packs = vec![pack(1, 4, 400), pack(2, 4, 400)];
        let rows: HashMap<u32, PackUse> = [(1, usage(4, 4, 400))].into_iter().collect();
        let e = plan_packs(&packs, &rows, 0.1).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Corrupt);
        assert!(e.to_string().contains("pack #2"), "{e}");
        assert!(e.to_string().contains("repair index"), "{e}");
    }

    #[test]
    fn the_plan_names_what_goes_and_what_it_frees() {
        let packs = vec![
            pack(7, 4, 4000), // nothing live: deleted
            pack(8, 4, 4000), // half live, far past 10%: rewritten
            pack(9, 4, 4000), // all live: kept
        ];
        let rows: HashMap<u32, PackUse> = [
            (7, usage(4, 0, 0)),
            (8, usage(4, 2, 2000)),
            (9, usage(4, 4, 4000)),
        ]
        .into_iter()
        .collect();
        let mut p = plan_packs(&packs, &rows, 0.1).unwrap();
        p.add_unknown(vec![UnknownPack {
            name: "packs/ee/ee.pack".into(),
            bytes: 500,
        }]);

        let deleted: Vec<&PlannedPack> = p.with_fate(Fate::Delete).collect();
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].pack, 7);
        assert_eq!(deleted[0].name, packs[0].1.object_name());
        assert_eq!(deleted[0].reason, "no blob in it is referenced");
        let rewritten: Vec<&PlannedPack> = p.with_fate(Fate::Rewrite).collect();
        assert_eq!(rewritten.len(), 1);
        assert_eq!(rewritten[0].pack, 8);
        assert_eq!(
            (rewritten[0].live_bytes, rewritten[0].frame_bytes),
            (2000, 4000)
        );
        assert_eq!(
            rewritten[0].reason,
            "2000 unused frame bytes, more than 10% of its 2000 live ones"
        );
        assert_eq!(p.packs_kept, 1);
        assert_eq!(p.with_fate(Fate::Trim).count(), 0);

        // The files of the deleted and rewritten packs go, and the unknown one.
        let files: Vec<&str> = p.files_to_delete().collect();
        assert_eq!(
            files,
            vec![
                packs[0].1.object_name().as_str(),
                packs[1].1.object_name().as_str(),
                "packs/ee/ee.pack"
            ]
        );
        let sizes: u64 = packs.iter().map(|(_, i)| i.size).sum();
        assert_eq!(p.bytes_before, sizes + 500);
        assert_eq!(p.bytes_removed, packs[0].1.size + packs[1].1.size + 500);
        // The rewritten pack's live half is written again.
        assert_eq!(p.bytes_freed, p.bytes_removed - 2000);
    }

    #[test]
    fn a_repository_without_garbage_has_an_empty_plan() {
        let packs = vec![pack(1, 3, 300), pack(2, 3, 300)];
        let rows: HashMap<u32, PackUse> = [(1, usage(3, 3, 299)), (2, usage(3, 3, 300))]
            .into_iter()
            .collect();
        let p = plan_packs(&packs, &rows, 0.1).unwrap();
        assert!(p.packs.is_empty(), "{:?}", p.packs);
        assert_eq!(p.packs_kept, 2);
        assert_eq!((p.bytes_removed, p.bytes_freed), (0, 0));
        assert_eq!(p.files_to_delete().count(), 0);
    }

    #[test]
    fn percentages_are_short() {
        assert_eq!(percent(0.1), "10");
        assert_eq!(percent(0.125), "12.5");
        assert_eq!(percent(0.0), "0");
        assert_eq!(percent(1.0), "100");
    }
}
