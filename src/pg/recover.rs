//! `strata pg restore`: a data directory laid down from the base backup that precedes a moment,
//! with the settings that make PostgreSQL replay the archived WAL up to that moment.
//!
//! The server does the replay: strata picks the base backup, writes its files, `recovery.signal`
//! and the recovery settings (in `postgresql.auto.conf`, which the server reads last), and the
//! server then asks `strata pg restore-wal` for each WAL file it needs.

use super::base::{FoundBase, bases_in};
use super::lsn::Lsn;
use crate::error::{Error, IoContext, Result};
use crate::manifest::Manifest;
use crate::repo::Repo;
use std::path::{Path, PathBuf};

/// Where the replay stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive: every WAL file it holds is replayed.
    End,
    /// A moment, in nanoseconds since the epoch (PostgreSQL keeps microseconds: the moment is
    /// cut to the microsecond, and the commits at it are included).
    Time(i64),
    /// A WAL position (included).
    Lsn(Lsn),
    /// A restore point (`pg_create_restore_point`), and where it is when strata made it.
    Name(String, Option<Lsn>),
}

/// What the server does once it reaches the target (`recovery_target_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Promote,
    Pause,
    Shutdown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

pub struct RecoverOptions {
    pub target: Target,
    pub action: Action,
    /// `recovery_target_timeline` (`latest`, `current` or a number); PostgreSQL's default
    /// (`latest`) when `None`.
    pub timeline: Option<String>,
    /// The `restore_command` the server runs (the caller knows how strata was started and where
    /// the repository and its passphrase are).
    pub restore_command: String,
    /// Leave the copy's WAL out of the archive (`archive_mode = off`): for a copy made to look
    /// at the past, whose new timeline must not mix with the server's.
    pub no_archive: bool,
}

/// What was restored.
#[derive(Debug)]
pub struct Recovered {
    pub base: FoundBase,
    pub report: crate::restore::RestoreReport,
    /// The settings written, in order.
    pub settings: Vec<(String, String)>,
}

/// Every base backup of the repository, oldest stop first.
pub fn bases(repo: &Repo) -> Result<Vec<FoundBase>> {
    let mut out = Vec::new();
    for s in crate::snapshots::list_without_wal(repo)? {
        out.extend(bases_in(&s.id, &s.manifest)?);
    }
    out.sort_by_key(|b| (b.info.stop_time_ns, b.info.stop_lsn));
    Ok(out)
}

/// The newest base backup from which `target` can be reached: one that ended before it.
pub fn choose<'a>(bases: &'a [FoundBase], target: &Target) -> Result<&'a FoundBase> {
    let Some(oldest) = bases.first() else {
        return Err(Error::not_found(
            "the repository holds no PostgreSQL base backup (take one with `strata backup \
             --pg-base CONNSTR`)",
        ));
    };
    let found = match target {
        Target::End | Target::Name(_, None) => bases.last(),
        Target::Time(t) => bases.iter().rev().find(|b| b.info.stop_time_ns <= *t),
        Target::Lsn(l) | Target::Name(_, Some(l)) => {
            bases.iter().rev().find(|b| b.info.stop_lsn <= *l)
        }
    };
    found.ok_or_else(|| {
        let when = match target {
            Target::Time(t) => fmt_time(*t),
            Target::Lsn(l) | Target::Name(_, Some(l)) => l.to_string(),
            _ => String::new(),
        };
        Error::not_found(format!(
            "no base backup ends before {when}: the oldest ends at {} ({}, snapshot {}); a \
             recovery cannot reach a moment before its base backup's end",
            fmt_time(oldest.info.stop_time_ns),
            oldest.info.stop_lsn,
            oldest.snapshot.short()
        ))
    })
}

/// `recovery_target_time`'s form: UTC to the microsecond (cut, not rounded: a commit at the
/// given moment stays included).
pub fn fmt_time(ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(ns.div_euclid(1000) * 1000);
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// Lays the base backup for `opts.target` down in `dir` (absent or empty) and writes the
/// recovery settings.
pub fn recover(repo: &Repo, dir: &Path, opts: &RecoverOptions) -> Result<Recovered> {
    let all = bases(repo)?;
    let target = match &opts.target {
        Target::Name(n, None) => Target::Name(n.clone(), super::find_restore_point(repo, n)?),
        t => t.clone(),
    };
    let base = match &target {
        // A point strata did not record could be anywhere: the oldest base backup reaches
        // every point after it.
        Target::Name(_, None) => match all.first() {
            Some(b) => b,
            None => choose(&all, &target)?,
        },
        t => choose(&all, t)?,
    }
    .clone();
    prepare_dir(dir)?;
    let manifest = Manifest::decode(
        &repo
            .index
            .read()
            .and_then(|t| crate::index::snapshot_manifest(&t, &base.snapshot))?
            .ok_or_else(|| Error::not_found(format!("snapshot {}", base.snapshot.short())))?,
        Some(&base.snapshot),
        repo.keys(),
    )?;
    let inside = inside(&manifest, &base.name);
    let mut ropts = crate::restore::RestoreOptions::new(dir.to_path_buf());
    ropts.delete = false;
    let report = crate::restore::restore(repo, &inside, &ropts)?;
    if !report.errors.is_empty() {
        return Err(Error::invalid(format!(
            "the base backup could not be restored whole: {}",
            report.errors.join("; ")
        )));
    }
    // Run as root for a server run as its own user: the directory is the server's, as its
    // files are.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0
        && let Some(owner) = inside.entries.iter().find(|e| e.path == b"global")
    {
        std::os::unix::fs::chown(dir, Some(owner.uid), Some(owner.gid)).ctx("set owner", dir)?;
    }
    let settings = settings(opts);
    write_settings(dir, &settings)?;
    Ok(Recovered {
        base,
        report,
        settings,
    })
}

/// The base backup's files, as a manifest of their own (paths relative to the data directory).
fn inside(manifest: &Manifest, name: &str) -> Manifest {
    let prefix = format!("{name}/");
    let mut m = manifest.clone();
    m.entries = manifest
        .entries
        .iter()
        .filter_map(|e| {
            let rest = e.path.strip_prefix(prefix.as_bytes())?;
            let mut e = e.clone();
            e.path = rest.to_vec();
            Some(e)
        })
        .collect();
    m
}

/// Makes `dir` an empty directory only its owner can enter (PostgreSQL refuses any other).
fn prepare_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::read_dir(dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(Error::invalid(format!(
                    "{} is not empty: give a new or empty directory (a restore never writes \
                     over a data directory)",
                    dir.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).ctx("create", dir)?;
        }
        Err(e) => return Err(Error::io_path("read", dir, e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ctx("chmod", dir)
}

/// The recovery settings for `opts`.
fn settings(opts: &RecoverOptions) -> Vec<(String, String)> {
    let mut s = vec![("restore_command".to_string(), opts.restore_command.clone())];
    match &opts.target {
        Target::End => {}
        Target::Time(t) => s.push(("recovery_target_time".into(), fmt_time(*t))),
        Target::Lsn(l) => s.push(("recovery_target_lsn".into(), l.to_string())),
        Target::Name(n, _) => s.push(("recovery_target_name".into(), n.clone())),
    }
    if opts.target != Target::End {
        s.push(("recovery_target_action".into(), opts.action.as_str().into()));
    }
    if let Some(t) = &opts.timeline {
        s.push(("recovery_target_timeline".into(), t.clone()));
    }
    if opts.no_archive {
        s.push(("archive_mode".into(), "off".into()));
    }
    s
}

/// The settings a restore replaces: a copy made from a copy has them already.
const REPLACED: [&str; 9] = [
    "restore_command",
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_xid",
    "recovery_target_action",
    "recovery_target_timeline",
    "recovery_target_inclusive",
];

/// Writes the settings at the end of `postgresql.auto.conf` (earlier lines setting the same
/// things commented out), and `recovery.signal`; removes `standby.signal`.
fn write_settings(dir: &Path, settings: &[(String, String)]) -> Result<()> {
    let auto = dir.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io_path("read", &auto, e)),
    };
    let mut text = String::new();
    for line in old.lines() {
        let key = line.split('=').next().unwrap_or("").trim();
        let ours = settings.iter().any(|(k, _)| k == key);
        if REPLACED.contains(&key) || ours {
            text.push_str("# replaced by strata pg restore: ");
        }
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("# strata pg restore\n");
    for (k, v) in settings {
        text.push_str(&format!("{k} = '{}'\n", v.replace('\'', "''")));
    }
    write_file(&auto, text.as_bytes())?;
    write_file(&dir.join("recovery.signal"), b"")?;
    match std::fs::remove_file(dir.join("standby.signal")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io_path("remove", &dir.join("standby.signal"), e))
        }
        _ => Ok(()),
    }
}

/// Writes a file of the data directory, owned as the directory is (a restore run as root for
/// a server run as `postgres`).
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let parent = path.parent().unwrap_or(Path::new("."));
    let owner = std::fs::metadata(parent).ctx("read", parent)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ctx("create", path)?;
    std::io::Write::write_all(&mut f, bytes).ctx("write", path)?;
    f.sync_all().ctx("sync", path)?;
    std::os::unix::fs::fchown(&f, Some(owner.uid()), Some(owner.gid())).ctx("chown", path)
}

/// Quotes `s` for `sh` (single quotes).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `restore_command` that runs `exe` against the repository at `repo` (with its passphrase
/// file, when there is one).
pub fn restore_command(exe: &Path, repo: &Path, password_file: Option<&PathBuf>) -> String {
    let mut cmd = format!(
        "{} --repo {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(&repo.to_string_lossy())
    );
    if let Some(p) = password_file {
        cmd.push_str(&format!(
            " --password-file {}",
            shell_quote(&p.to_string_lossy())
        ));
    }
    cmd.push_str(" pg restore-wal %f %p");
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::base::BaseInfo;

    fn base(n: u8, stop_ns: i64, stop: u64) -> FoundBase {
        FoundBase {
            snapshot: crate::id::ChunkId([n; 32]),
            name: "pgdata".into(),
            info: BaseInfo {
                start_lsn: Lsn(stop - 100),
                stop_lsn: Lsn(stop),
                timeline: 1,
                seg_size: 16 << 20,
                server_version: "15".into(),
                start_time: String::new(),
                stop_time_ns: stop_ns,
            },
        }
    }

    #[test]
    fn the_newest_base_that_ends_before_the_target_is_chosen() {
        let bases = [base(1, 100, 1000), base(2, 200, 2000), base(3, 300, 3000)];
        let pick = |t: Target| choose(&bases, &t).map(|b| b.snapshot);
        assert_eq!(pick(Target::Time(250)).unwrap(), bases[1].snapshot);
        assert_eq!(pick(Target::Time(200)).unwrap(), bases[1].snapshot);
        assert_eq!(pick(Target::Lsn(Lsn(2999))).unwrap(), bases[1].snapshot);
        assert_eq!(pick(Target::End).unwrap(), bases[2].snapshot);
        assert_eq!(
            pick(Target::Name("x".into(), Some(Lsn(1500)))).unwrap(),
            bases[0].snapshot
        );
        let early = choose(&bases, &Target::Time(50)).unwrap_err().to_string();
        assert!(early.contains("no base backup ends before"), "{early}");
        assert!(choose(&[], &Target::End).is_err());
    }

    #[test]
    fn times_are_cut_to_the_microsecond() {
        // 2026-12-08 02:05:36.123456789 UTC
        let ns = 1_796_695_536_123_456_789;
        assert_eq!(fmt_time(ns), "2026-12-08 02:05:36.123456+00");
    }

    #[test]
    fn commands_are_quoted_for_the_shell_and_the_settings_file() {
        let c = restore_command(
            Path::new("/usr/bin/strata"),
            Path::new("/srv/my repo's"),
            Some(&PathBuf::from("/etc/strata/pass")),
        );
        assert_eq!(
            c,
            r"/usr/bin/strata --repo '/srv/my repo'\''s' --password-file /etc/strata/pass pg restore-wal %f %p"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "work_mem = '4MB'\nrecovery_target_time = '2020-01-01'\n",
        )
        .unwrap();
        write_settings(dir.path(), &[("restore_command".into(), c.clone())]).unwrap();
        let text = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(text.starts_with(
            "work_mem = '4MB'\n# replaced by strata pg restore: recovery_target_time"
        ));
        assert!(text.contains(&format!("restore_command = '{}'", c.replace('\'', "''"))));
        assert!(dir.path().join("recovery.signal").exists());
    }
}
