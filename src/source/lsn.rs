//! Positions in PostgreSQL's write-ahead log, and the names of the files that hold them.

use crate::error::{Error, Result};

/// A position in the WAL (PostgreSQL's `XLogRecPtr`), written as two hexadecimal halves
/// (`0/3000090`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Reads `HI/LO` as PostgreSQL prints it.
    pub fn parse(text: &str) -> Result<Lsn> {
        let bad = || {
            Error::invalid(format!(
                "{text:?} is not a WAL position (expected two hexadecimal numbers such as \
                 0/3000090)"
            ))
        };
        let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
        let half = |h: &str| {
            if h.is_empty() || h.len() > 8 {
                return Err(bad());
            }
            u32::from_str_radix(h, 16).map_err(|_| bad())
        };
        Ok(Lsn(((half(hi)? as u64) << 32) | half(lo)? as u64))
    }

    /// The number of the segment that holds this position, with segments of `seg_size` bytes.
    pub fn segment(self, seg_size: u64) -> u64 {
        self.0 / seg_size.max(1)
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

/// A WAL segment's file name (`TTTTTTTTXXXXXXXXYYYYYYYY`): its timeline, then its number split
/// into the "log" and the segment within it, as PostgreSQL's `XLogFileName` writes it.
pub fn segment_name(timeline: u32, segment: u64, seg_size: u64) -> String {
    let per_log = 0x1_0000_0000 / seg_size.max(1);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_log,
        segment % per_log
    )
}

/// A segment file name's timeline and segment number (with segments of `seg_size` bytes), or
/// `None` for any other name.
pub fn parse_segment_name(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let part = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).ok();
    let per_log = 0x1_0000_0000 / seg_size.max(1);
    let (tli, log, seg) = (part(0..8)?, part(8..16)? as u64, part(16..24)? as u64);
    if seg >= per_log {
        return None;
    }
    Some((tli, log * per_log + seg))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn positions_read_and_print_as_postgres_does() {
        let l = Lsn::parse("0/3000090").unwrap();
        assert_eq!(l, Lsn(0x300_0090));
        assert_eq!(l.to_string(), "0/3000090");
        assert_eq!(Lsn::parse("1A/FF").unwrap().to_string(), "1A/FF");
        for bad in ["", "0", "/1", "1/", "g/1", "123456789/0", "0/1/2"] {
            assert!(Lsn::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn segment_names_match_postgres() {
        // From a real server: 0/2000028 is in 000000010000000000000002.
        let l = Lsn::parse("0/2000028").unwrap();
        assert_eq!(
            segment_name(1, l.segment(SEG), SEG),
            "000000010000000000000002"
        );
        // Past the first 4 GiB: 1/0 is segment 256, log 1 segment 0.
        let l = Lsn::parse("1/0").unwrap();
        assert_eq!(
            segment_name(3, l.segment(SEG), SEG),
            "000000030000000100000000"
        );
        assert_eq!(
            parse_segment_name("000000030000000100000000", SEG),
            Some((3, 256))
        );
        assert_eq!(parse_segment_name("0000000300000001000001FF", SEG), None);
        assert_eq!(parse_segment_name("00000001.history", SEG), None);
        // 64 MiB segments: 64 per log.
        let big = 64 << 20;
        assert_eq!(segment_name(1, 64, big), "000000010000000100000000");
        assert_eq!(
            parse_segment_name("000000010000000100000003", big),
            Some((1, 67))
        );
    }
}
