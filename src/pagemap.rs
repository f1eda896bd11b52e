//! Page maps: which stored run holds each page of one version of a database file (see
//! docs/design/page-maps.md).
//!
//! A run is a blob of up to [`RUN_PAGES`] whole pages. A map lists, in page order, extents of
//! consecutive pages held at consecutive slots of one run. A *base* map covers every page of
//! the file; a *delta* map names its base and covers only the pages that differ from it.
//!
//! Encoding (hashed, so it never changes within a version; the first byte shares its space with
//! chunk-list nodes, whose version is 1, so a binary that predates maps refuses one cleanly):
//! `version u8 = 2 | kind u8 (0 base, 1 delta) | page_size u32 | pages u64 | [delta: base id[32]]
//! | run count u32 | run count x id[32] | extent count u32 | extent count x (first u32, count u32,
//! run u32, slot u32)`, little-endian. Pages are numbered from 1, as SQLite numbers them.

use crate::error::{Error, Result};
use crate::id::ChunkId;

pub const MAP_VERSION: u8 = 2;
/// The most pages one run holds.
pub const RUN_PAGES: u32 = 256;
/// The most runs or extents a map may list (a hostile count must not ask for unbounded memory);
/// a file of 2^24 scattered changed pages since its base would need a new base long before.
const MAX_ENTRIES: u64 = 1 << 24;

/// Consecutive pages `first..first + count` held at slots `slot..slot + count` of run `run`
/// (an index into the map's run table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub first: u32,
    pub count: u32,
    pub run: u32,
    pub slot: u32,
}

impl Extent {
    fn end(&self) -> u64 {
        self.first as u64 + self.count as u64
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageMap {
    pub page_size: u32,
    /// Pages of the file.
    pub pages: u64,
    /// The base map a delta lays its pages over; `None` for a base.
    pub base: Option<ChunkId>,
    pub runs: Vec<ChunkId>,
    /// Sorted by `first`, not overlapping.
    pub extents: Vec<Extent>,
}

impl PageMap {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.runs.len() * 32 + self.extents.len() * 16);
        out.push(MAP_VERSION);
        out.push(u8::from(self.base.is_some()));
        out.extend_from_slice(&self.page_size.to_le_bytes());
        out.extend_from_slice(&self.pages.to_le_bytes());
        if let Some(b) = &self.base {
            out.extend_from_slice(b.as_bytes());
        }
        out.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        for r in &self.runs {
            out.extend_from_slice(r.as_bytes());
        }
        out.extend_from_slice(&(self.extents.len() as u32).to_le_bytes());
        for e in &self.extents {
            for v in [e.first, e.count, e.run, e.slot] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Decodes and checks a map: every extent inside the file and inside a run of the table,
    /// extents in order and apart, and a base map covering every page. Anything else is damage.
    pub fn decode(b: &[u8], what: &dyn std::fmt::Display) -> Result<PageMap> {
        let bad = |why: &str| Error::corrupt(format!("{what}: malformed page map ({why})"));
        let mut r = Reader { b, at: 0 };
        if r.u8().ok_or_else(|| bad("empty"))? != MAP_VERSION {
            return Err(bad("not a page map of version 2"));
        }
        let delta = match r.u8().ok_or_else(|| bad("short"))? {
            0 => false,
            1 => true,
            _ => return Err(bad("unknown kind")),
        };
        let page_size = r.u32().ok_or_else(|| bad("short"))?;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(bad("page size"));
        }
        let pages = r.u64().ok_or_else(|| bad("short"))?;
        if pages > u32::MAX as u64 {
            return Err(bad("more pages than SQLite numbers"));
        }
        let base = match delta {
            true => Some(ChunkId(r.id().ok_or_else(|| bad("short"))?)),
            false => None,
        };
        let n_runs = r.u32().ok_or_else(|| bad("short"))? as u64;
        if n_runs > MAX_ENTRIES || n_runs * 32 > r.left() as u64 {
            return Err(bad("run count"));
        }
        let runs = (0..n_runs)
            .map(|_| r.id().map(ChunkId))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("short"))?;
        let n_ext = r.u32().ok_or_else(|| bad("short"))? as u64;
        if n_ext > MAX_ENTRIES || n_ext * 16 != r.left() as u64 {
            return Err(bad("extent count"));
        }
        let mut extents = Vec::with_capacity(n_ext as usize);
        let mut next = 1u64;
        let mut covered = 0u64;
        for _ in 0..n_ext {
            let (first, count, run, slot) = (
                r.u32().ok_or_else(|| bad("short"))?,
                r.u32().ok_or_else(|| bad("short"))?,
                r.u32().ok_or_else(|| bad("short"))?,
                r.u32().ok_or_else(|| bad("short"))?,
            );
            let e = Extent {
                first,
                count,
                run,
                slot,
            };
            if count == 0
                || (first as u64) < next
                || e.end() > pages + 1
                || run as u64 >= n_runs
                || slot as u64 + count as u64 > RUN_PAGES as u64
            {
                return Err(bad("extent out of place"));
            }
            next = e.end();
            covered += count as u64;
            extents.push(e);
        }
        if !delta && covered != pages {
            return Err(bad("a base map that does not cover every page"));
        }
        Ok(PageMap {
            page_size,
            pages,
            base,
            runs,
            extents,
        })
    }

    /// The extent that holds page `page` (from 1), if this map holds it.
    pub fn extent_of(&self, page: u32) -> Option<&Extent> {
        let i = self.extents.partition_point(|e| e.first <= page);
        let e = self.extents.get(i.checked_sub(1)?)?;
        (page < e.first + e.count).then_some(e)
    }

    /// Where page `page` (from 1) is: (run id, slot), if this map holds it.
    pub fn locate(&self, page: u32) -> Option<(ChunkId, u32)> {
        let e = self.extent_of(page)?;
        Some((self.runs[e.run as usize], e.slot + page - e.first))
    }

    /// The base map `base` with `delta`'s pages laid over it: a new base of `delta`'s size (pages
    /// past it dropped), with the runs both name, in use order.
    pub fn overlay(base: &PageMap, delta: &PageMap) -> Result<PageMap> {
        if base.base.is_some() || base.page_size != delta.page_size {
            return Err(Error::invalid(
                "a delta goes over a base map of its page size",
            ));
        }
        let mut out = Builder::new(delta.page_size);
        let mut d = delta.extents.iter().peekable();
        let mut page = 1u64;
        let end = delta.pages + 1;
        while page < end {
            // The delta's extent at or after `page`.
            while d.peek().is_some_and(|e| e.end() <= page) {
                d.next();
            }
            match d.peek() {
                Some(e) if (e.first as u64) <= page => {
                    let skip = (page - e.first as u64) as u32;
                    let n = (e.end().min(end) - page) as u32;
                    out.push(delta.runs[e.run as usize], e.slot + skip, page as u32, n);
                    page += n as u64;
                }
                next => {
                    // From the base, up to the delta's next extent.
                    let until = next.map_or(end, |e| e.first as u64).min(end);
                    let be = base.extent_of(page as u32).ok_or_else(|| {
                        Error::corrupt(format!("page {page} is in neither the base nor the delta"))
                    })?;
                    let n = (be.end().min(until) - page) as u32;
                    let slot = be.slot + (page - be.first as u64) as u32;
                    out.push(base.runs[be.run as usize], slot, page as u32, n);
                    page += n as u64;
                }
            }
        }
        Ok(out.finish(delta.pages, None))
    }
}

impl PageMap {
    /// Pages this map holds (all of them for a base).
    pub fn covered(&self) -> u64 {
        self.extents.iter().map(|e| e.count as u64).sum()
    }

    /// `self` (a base, or a delta's own extents) with `upper`'s extents laid over, cut at
    /// `pages` pages: the pages of the result are `upper`'s where it has them, else `self`'s.
    /// The result is a delta on `base` when that is given, else a base (the caller checks that
    /// it covers every page: see [`PageMap::check_base`]).
    pub fn lay_over(&self, upper: &PageMap, pages: u64, base: Option<ChunkId>) -> PageMap {
        let mut out = Builder::new(upper.page_size);
        let end = pages + 1;
        let mut li = 0usize;
        // Pushes `self`'s pages in `[a, b)`; `a` never goes back between calls.
        let mut lower = |out: &mut Builder, a: u64, b: u64| {
            if a >= b {
                return;
            }
            while let Some(l) = self.extents.get(li) {
                if l.end() <= a {
                    li += 1;
                    continue;
                }
                if l.first as u64 >= b {
                    return;
                }
                let start = a.max(l.first as u64);
                let stop = b.min(l.end());
                let skip = (start - l.first as u64) as u32;
                out.push(
                    self.runs[l.run as usize],
                    l.slot + skip,
                    start as u32,
                    (stop - start) as u32,
                );
                if l.end() > b {
                    return;
                }
                li += 1;
            }
        };
        let mut page = 1u64;
        for u in &upper.extents {
            let first = u.first as u64;
            if first >= end {
                break;
            }
            lower(&mut out, page, first);
            let stop = u.end().min(end);
            out.push(
                upper.runs[u.run as usize],
                u.slot,
                u.first,
                (stop - first) as u32,
            );
            page = stop;
        }
        lower(&mut out, page, end);
        out.finish(pages, base)
    }

    /// An error unless this is a base covering every page.
    pub fn check_base(&self) -> Result<()> {
        if self.base.is_some() || self.covered() != self.pages {
            return Err(Error::corrupt(format!(
                "a page map of {} pages that holds {} of them",
                self.pages,
                self.covered()
            )));
        }
        Ok(())
    }

    /// The byte pieces of the file: (file offset, run id, byte offset in the run, length), in
    /// file order.
    pub fn pieces(&self) -> impl Iterator<Item = (u64, ChunkId, u64, u64)> + '_ {
        let ps = self.page_size as u64;
        self.extents.iter().map(move |e| {
            (
                (e.first as u64 - 1) * ps,
                self.runs[e.run as usize],
                e.slot as u64 * ps,
                e.count as u64 * ps,
            )
        })
    }
}

/// The pages a run holds at most for pages of `page_size` bytes: [`RUN_PAGES`], and no more than
/// 1 MiB (one page for pages larger than that).
pub fn run_pages(page_size: u32) -> u32 {
    ((1u32 << 20) / page_size.max(1)).clamp(1, RUN_PAGES)
}

/// A stored version of a paged file: its base map and, when the version is a delta, the delta.
pub struct Version {
    pub base_id: ChunkId,
    pub base: PageMap,
    pub delta: Option<PageMap>,
}

impl Version {
    /// Reads the map `id` and, for a delta, its base, with `fetch` (bytes checked against their
    /// id). A delta's base must be a base of the same page size.
    pub fn load(fetch: &dyn Fn(&ChunkId) -> Result<Vec<u8>>, id: &ChunkId) -> Result<Version> {
        let map = PageMap::decode(&fetch(id)?, &format_args!("page map {}", id.short()))?;
        let Some(base_id) = map.base else {
            return Ok(Version {
                base_id: *id,
                base: map,
                delta: None,
            });
        };
        let base = PageMap::decode(
            &fetch(&base_id)?,
            &format_args!("page map {}", base_id.short()),
        )?;
        if base.base.is_some() || base.page_size != map.page_size {
            return Err(Error::corrupt(format!(
                "page map {}: its base {} is not a base map of its page size",
                id.short(),
                base_id.short()
            )));
        }
        Ok(Version {
            base_id,
            base,
            delta: Some(map),
        })
    }

    /// Every page's place: the base with the delta laid over.
    pub fn flat(&self) -> Result<PageMap> {
        match &self.delta {
            None => Ok(self.base.clone()),
            Some(d) => PageMap::overlay(&self.base, d),
        }
    }

    /// The file's size in bytes.
    pub fn bytes(&self) -> Option<u64> {
        let m = self.delta.as_ref().unwrap_or(&self.base);
        m.pages.checked_mul(m.page_size as u64)
    }
}

/// The blobs a node-kind blob names: a page map's runs and base, or a chunk-list node's
/// entries.
pub fn children(bytes: &[u8], id: &ChunkId) -> Result<Vec<ChunkId>> {
    if bytes.first() == Some(&MAP_VERSION) {
        let map = PageMap::decode(bytes, &format_args!("page map {}", id.short()))?;
        let mut out = map.runs;
        out.extend(map.base);
        return Ok(out);
    }
    let node = crate::tree::Node::decode(bytes, &format_args!("chunk-list node {}", id.short()))?;
    Ok(node.entries.iter().map(|e| e.id).collect())
}

/// Builds a map from (run, slot, page, count) pieces in page order, joining pieces that continue
/// one another.
pub struct Builder {
    page_size: u32,
    runs: Vec<ChunkId>,
    index: std::collections::HashMap<ChunkId, u32>,
    extents: Vec<Extent>,
}

impl Builder {
    pub fn new(page_size: u32) -> Builder {
        Builder {
            page_size,
            runs: Vec::new(),
            index: std::collections::HashMap::new(),
            extents: Vec::new(),
        }
    }

    /// Pages `first..first + count` are at slots `slot..` of run `run`.
    pub fn push(&mut self, run: ChunkId, slot: u32, first: u32, count: u32) {
        let next = self.runs.len() as u32;
        let r = *self.index.entry(run).or_insert_with(|| next);
        if r == next {
            self.runs.push(run);
        }
        if let Some(last) = self.extents.last_mut()
            && last.run == r
            && last.first as u64 + last.count as u64 == first as u64
            && last.slot + last.count == slot
        {
            last.count += count;
            return;
        }
        self.extents.push(Extent {
            first,
            count,
            run: r,
            slot,
        });
    }

    pub fn finish(self, pages: u64, base: Option<ChunkId>) -> PageMap {
        PageMap {
            page_size: self.page_size,
            pages,
            base,
            runs: self.runs,
            extents: self.extents,
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    fn id(&mut self) -> Option<[u8; 32]> {
        self.take(32).map(|s| s.try_into().expect("32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    /// A base of `pages` pages in runs of 256, and the same as a plain array.
    fn base(pages: u32) -> (PageMap, Vec<(ChunkId, u32)>) {
        let mut b = Builder::new(4096);
        let mut model = Vec::new();
        let mut p = 1;
        while p <= pages {
            let n = RUN_PAGES.min(pages - p + 1);
            let r = run((p / RUN_PAGES) as u8);
            b.push(r, 0, p, n);
            model.extend((0..n).map(|s| (r, s)));
            p += n;
        }
        (b.finish(pages as u64, None), model)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A delta of scattered pages laid over a base gives, page by page, what an array would.
        #[test]
        fn overlay_matches_an_array(pages in 1u32..2000, changes in proptest::collection::btree_set(1u32..2000, 0..200), grow in 0u32..300) {
            let (b, mut model) = base(pages);
            let total = pages + grow;
            let mut d = Builder::new(4096);
            let changed: Vec<u32> = changes.into_iter().filter(|p| *p <= pages)
                .chain(pages + 1..=total).collect();
            for (k, p) in changed.iter().enumerate() {
                let r = run(200 + (k as u32 / RUN_PAGES) as u8);
                let slot = k as u32 % RUN_PAGES;
                d.push(r, slot, *p, 1);
                let at = *p as usize - 1;
                if at < model.len() { model[at] = (r, slot) } else { model.push((r, slot)) }
            }
            let delta = d.finish(total as u64, Some(run(99)));
            let bytes = delta.encode();
            prop_assert_eq!(PageMap::decode(&bytes, &"delta").unwrap(), delta.clone());
            let merged = PageMap::overlay(&b, &delta).unwrap();
            prop_assert!(merged.base.is_none());
            let again = PageMap::decode(&merged.encode(), &"merged").unwrap();
            prop_assert_eq!(&again, &merged);
            for p in 1..=total {
                prop_assert_eq!(merged.locate(p), Some(model[p as usize - 1]), "page {}", p);
            }
            prop_assert_eq!(merged.locate(total + 1), None);
            prop_assert_eq!(merged.locate(0), None);
        }

        /// A sparse map laid over another sparse map, cut at any size, gives page by page what
        /// two arrays would.
        #[test]
        fn lay_over_matches_an_array(lower in proptest::collection::btree_map(1u32..600, 0u8..4, 0..300), upper in proptest::collection::btree_map(1u32..600, 0u8..4, 0..300), pages in 1u64..700) {
            let build = |pages: &std::collections::BTreeMap<u32, u8>, tag: u8| {
                let mut b = Builder::new(4096);
                for (p, r) in pages {
                    b.push(run(tag + r), p % RUN_PAGES, *p, 1);
                }
                b.finish(600, None)
            };
            let (l, u) = (build(&lower, 10), build(&upper, 20));
            let out = l.lay_over(&u, pages, Some(run(1)));
            prop_assert_eq!(out.base, Some(run(1)));
            prop_assert_eq!(PageMap::decode(&out.encode(), &"out").unwrap(), out.clone());
            for p in 1..=700u32 {
                let want = if p as u64 > pages {
                    None
                } else {
                    upper.get(&p).map(|r| (run(20 + r), p % RUN_PAGES))
                        .or_else(|| lower.get(&p).map(|r| (run(10 + r), p % RUN_PAGES)))
                };
                prop_assert_eq!(out.locate(p), want, "page {}", p);
            }
        }

        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = PageMap::decode(&bytes, &"x");
            let mut v = vec![MAP_VERSION];
            v.extend_from_slice(&bytes);
            let _ = PageMap::decode(&v, &"x");
        }
    }

    #[test]
    fn malformed_maps_are_refused() {
        let (b, _) = base(600);
        let good = b.encode();
        assert_eq!(PageMap::decode(&good, &"b").unwrap(), b);
        // A base that misses a page, extents out of order, a run index past the table, a slot
        // past a run's end, a count that asks for more than the bytes hold: all damage.
        let mut gap = b.clone();
        gap.extents[1].first += 1;
        gap.extents[1].count -= 1;
        gap.extents[1].slot += 1;
        let mut order = b.clone();
        order.extents.swap(0, 1);
        let mut far = b.clone();
        far.extents[0].run = 9;
        let mut slot = b.clone();
        slot.extents[0].slot = 1;
        for bad in [gap, order, far, slot] {
            assert!(PageMap::decode(&bad.encode(), &"bad").is_err(), "{bad:?}");
        }
        let mut short = good.clone();
        short.truncate(good.len() - 1);
        assert!(PageMap::decode(&short, &"short").is_err());
        let mut huge = good.clone();
        let runs_at = 2 + 4 + 8;
        huge[runs_at..runs_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(PageMap::decode(&huge, &"huge").is_err());
        // Version 1 is a chunk-list node, not a map.
        let mut node = good;
        node[0] = 1;
        assert!(PageMap::decode(&node, &"node").is_err());
    }
}
