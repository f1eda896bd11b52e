//! Formatting helpers for human output.

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses sizes such as `4096`, `16k`, `16KiB`, `64MiB`, `1g`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use k, m or g)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size too large: {s:?}"))
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Set (to anything) by `strata serve` for the commands it runs: progress goes to standard error
/// as lines `strata-progress DONE TOTAL`, twice a second, instead of a bar.
pub const PROGRESS_LINES: &str = "STRATA_PROGRESS_LINES";
const PROGRESS_PREFIX: &str = "strata-progress ";

/// A "terminal" that takes each drawn state of a bar as one line on standard error.
#[derive(Debug)]
struct ProgressLines;

impl indicatif::TermLike for ProgressLines {
    fn width(&self) -> u16 {
        200
    }
    fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.write_str(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        use std::io::Write;
        if s.starts_with(PROGRESS_PREFIX) {
            writeln!(std::io::stderr(), "{}", s.trim_end())?;
        }
        Ok(())
    }
    fn clear_line(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// (done, total) from a progress line.
pub fn parse_progress_line(line: &str) -> Option<(u64, u64)> {
    let (done, total) = line.strip_prefix(PROGRESS_PREFIX)?.split_once(' ')?;
    Some((done.trim().parse().ok()?, total.trim().parse().ok()?))
}

/// A bar of bytes done out of a total, with the rate and the time left, on standard error when
/// it is a terminal (and the output is not JSON); under `strata serve`, progress lines.
pub fn byte_bar(json: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if std::env::var_os(PROGRESS_LINES).is_some() {
        let b = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::term_like_with_hz(Box::new(ProgressLines), 2),
        );
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!("{PROGRESS_PREFIX}{{pos}} {{len}}"))
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        return Some(b);
    }
    if !std::io::stderr().is_terminal() || json {
        return None;
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} [{wide_bar}] {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(5 << 30), "5.0 GiB");
        assert_eq!(super::parse_bytes("16KiB"), Ok(16 << 10));
        assert_eq!(super::parse_bytes(" 64m "), Ok(64 << 20));
        assert_eq!(super::parse_bytes("2g"), Ok(2 << 30));
        assert!(super::parse_bytes("12 parsecs").is_err());
        assert!(super::parse_bytes("99999999999999g").is_err());
    }
}
