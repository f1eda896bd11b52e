//! `strata.toml`: the daemon's one configuration file, and the environment variables that stand
//! in for it. Top-level settings from the environment override the file; job settings from the
//! environment fill in what a job does not set itself, and `STRATA_BACKUP_PATHS` alone defines a
//! job named `default` when the file has none.

use anyhow::{Result, anyhow, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use strata::retention::{Policy, parse_duration};
use strata::schedule::Schedule;
use toml::Spanned;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7433";

/// The file as written. Fields that need checking beyond their type keep their position, so an
/// error can name the line.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    repo: Option<PathBuf>,
    password_file: Option<PathBuf>,
    listen: Option<Spanned<String>>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    log_format: Option<Spanned<String>>,
    gc_min_garbage: Option<Spanned<String>>,
    disk_min_free: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    max_body: Option<Spanned<String>>,
    token_file: Option<PathBuf>,
    #[serde(default)]
    restore_roots: Vec<PathBuf>,
    #[serde(default)]
    backup_roots: Vec<PathBuf>,
    #[serde(default)]
    token: Vec<FileToken>,
    #[serde(default)]
    job: Vec<FileJob>,
    postgres_archive: Option<FilePgArchive>,
}

/// `[postgres_archive]`: what the daemon watches of a PostgreSQL server's WAL archive.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePgArchive {
    db: Option<String>,
    stall_after: Option<Spanned<String>>,
    check_every: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: String,
    blake3: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJob {
    name: Spanned<String>,
    #[serde(default)]
    paths: Vec<PathBuf>,
    #[serde(default)]
    sqlite: Vec<String>,
    #[serde(default)]
    postgres: Vec<String>,
    /// `CONNSTR[=NAME]`: a physical base backup (`backup --pg-base`).
    #[serde(default)]
    pg_base: Vec<String>,
    #[serde(default)]
    redis: Vec<String>,
    /// `COMMAND=NAME`: NAME stores the command's standard output (`sh -c COMMAND`).
    #[serde(default)]
    commands: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    kind: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    on_start: Option<bool>,
    retention: Option<Spanned<String>>,
    max_snapshots: Option<usize>,
    alert_after: Option<Spanned<String>>,
    /// Follow the job's SQLite databases (`strata follow`) while the daemon runs.
    follow: Option<bool>,
    /// How long a followed database's journal (its restorable instants) is kept.
    pitr_window: Option<Spanned<String>>,
}

/// A bearer token the API accepts, known only by its BLAKE3 hash.
#[derive(Clone, Debug)]
pub struct Token {
    pub name: String,
    pub hash: blake3::Hash,
}

#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub paths: Vec<PathBuf>,
    pub sqlite: Vec<String>,
    pub postgres: Vec<String>,
    /// Base backups (`backup --pg-base`), `CONNSTR[=NAME]`.
    pub pg_base: Vec<String>,
    pub redis: Vec<String>,
    pub commands: Vec<String>,
    pub exclude: Vec<String>,
    pub tags: Vec<String>,
    pub kind: String,
    pub schedule: Option<Schedule>,
    pub on_start: bool,
    pub retention: Option<Policy>,
    pub max_snapshots: Option<usize>,
    /// Health is degraded when the last success is older than this.
    pub alert_after_s: i64,
    /// The job's `sqlite` databases are followed while the daemon runs.
    pub follow: bool,
    /// How long their journals are kept (`strata follow --keep`), in seconds.
    pub pitr_window_s: i64,
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub repo: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub allowed_hosts: Vec<String>,
    pub json_logs: bool,
    pub gc_min_garbage: u64,
    /// Health is degraded when the repository's file system has less free than this fraction.
    pub disk_min_free: f64,
    pub shutdown_grace_s: u64,
    pub max_body: usize,
    pub tokens: Vec<Token>,
    /// Where the API token is kept when no `[[token]]` is configured (default: see
    /// `token_file::default_path`).
    pub token_file: Option<PathBuf>,
    /// Restores through the API only go below these (none: no restores through the API).
    pub restore_roots: Vec<PathBuf>,
    /// Snapshots of sources given in an API request only read below these (none: only
    /// configured jobs).
    pub backup_roots: Vec<PathBuf>,
    pub jobs: Vec<Job>,
    /// Health checks of a PostgreSQL server's WAL archive (`[postgres_archive]`); without it,
    /// what the repository holds of one is still reported, but never makes `/health` degraded.
    pub pg_archive: Option<PgArchive>,
}

/// `[postgres_archive]`, checked.
#[derive(Clone, Debug)]
pub struct PgArchive {
    /// The server whose `pg_stat_archiver` and WAL position are read (`psql -d`); without it,
    /// the server is taken to be always writing.
    pub db: Option<String>,
    /// Archiving has stalled when no segment came for this long while the server wrote WAL.
    pub stall_after_s: i64,
    /// How often the archive and the server are looked at.
    pub check_every_s: i64,
}

/// Where a setting came from, for error messages: a line of the file or a variable.
struct Origin<'a> {
    file: &'a str,
    text: &'a str,
}

impl Origin<'_> {
    fn at<T>(&self, s: &Spanned<T>) -> String {
        format!(
            "{}:{}",
            self.file,
            strata::codec::line_at(self.text, s.span().start)
        )
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A setting from the environment (which wins) or the file, checked by `parse`.
fn setting<T>(
    origin: &Origin,
    var: &str,
    from_file: Option<&Spanned<String>>,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Option<T>> {
    if let Some(v) = env(var) {
        return parse(&v).map(Some).map_err(|e| anyhow!("{var}: {e:#}"));
    }
    match from_file {
        Some(s) => parse(s.get_ref())
            .map(Some)
            .map_err(|e| anyhow!("{}: {e:#}", origin.at(s))),
        None => Ok(None),
    }
}

/// A job setting from the file, or else the environment.
fn job_setting<T>(
    origin: &Origin,
    var: &str,
    from_file: Option<&Spanned<String>>,
    parse: impl Fn(&str) -> Result<T>,
) -> Result<Option<T>> {
    match from_file {
        Some(s) => parse(s.get_ref())
            .map(Some)
            .map_err(|e| anyhow!("{}: {e:#}", origin.at(s))),
        None => match env(var) {
            Some(v) => parse(&v).map(Some).map_err(|e| anyhow!("{var}: {e:#}")),
            None => Ok(None),
        },
    }
}

fn parse_bytes(s: &str) -> Result<u64> {
    super::super::output::parse_bytes(s).map_err(|e| anyhow!(e))
}

fn parse_seconds(s: &str) -> Result<i64> {
    match parse_duration(s) {
        Some(ns) if ns > 0 => Ok(ns / 1_000_000_000),
        _ => bail!("not a duration such as 90s, 30m, 25h or 7d: {s:?}"),
    }
}

fn parse_fraction(s: &str) -> Result<f64> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| anyhow!("not a fraction such as 5% or 0.05: {s:?}"))?;
    if !(0.0..=1.0).contains(&v) {
        bail!("{s:?} is not between 0% and 100%");
    }
    Ok(v)
}

fn parse_kind(s: &str) -> Result<String> {
    const KINDS: [&str; 5] = ["manual", "hourly", "daily", "weekly", "monthly"];
    if KINDS.contains(&s) {
        Ok(s.to_string())
    } else {
        bail!("kind {s:?}: expected one of {}", KINDS.join(", "))
    }
}

fn parse_token_hash(s: &str) -> Result<blake3::Hash> {
    blake3::Hash::from_hex(s.trim())
        .map_err(|_| anyhow!("a token's blake3 is 64 hex digits (`strata serve --new-token NAME`)"))
}

/// `roots` from the file, or the `var` of paths separated by `:`; each must be absolute.
fn roots(file: &str, setting: &str, var: &str, from_file: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let (roots, origin): (Vec<PathBuf>, String) = match env(var) {
        Some(v) => (std::env::split_paths(&v).collect(), var.to_string()),
        None => (from_file.to_vec(), format!("{file}: {setting}")),
    };
    for r in &roots {
        if !r.is_absolute() {
            bail!("{origin}: {} is not an absolute path", r.display());
        }
    }
    Ok(roots)
}

fn parse_name(s: &str) -> Result<String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("job name {s:?}: use 1 to 64 letters, digits, '-', '_' or '.'");
    }
    Ok(s.to_string())
}

impl ServeConfig {
    /// Reads `file` (if given) and the environment.
    pub fn load(file: Option<&Path>) -> Result<ServeConfig> {
        let (text, name) = match file {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|e| anyhow!("{}: {e}", p.display()))?,
                p.display().to_string(),
            ),
            None => (String::new(), "(environment)".to_string()),
        };
        ServeConfig::parse(&text, &name)
    }

    /// Parses the text of a configuration file named `file` (for messages), then applies the
    /// environment. Settings are read in a fixed order, so the first error is always the same.
    pub fn parse(text: &str, file: &str) -> Result<ServeConfig> {
        let raw: FileConfig =
            toml::from_str(text).map_err(|e| anyhow!(strata::codec::toml_error(text, file, &e)))?;
        let o = Origin { file, text };
        let listen = listen(&o, &raw)?;
        let json_logs = json_logs(&o, &raw)?;
        let mut allowed_hosts = raw.allowed_hosts.clone();
        if let Some(v) = env("STRATA_ALLOWED_HOSTS") {
            allowed_hosts = v.split(',').map(|h| h.trim().to_string()).collect();
        }
        let tokens = tokens(&o, &raw.token)?;
        let jobs = jobs(&o, &raw.job)?;
        let config = ServeConfig {
            repo: env("STRATA_REPO").map(PathBuf::from).or(raw.repo),
            password_file: env("STRATA_PASSWORD_FILE")
                .map(PathBuf::from)
                .or(raw.password_file),
            listen,
            allowed_hosts,
            json_logs,
            gc_min_garbage: setting(
                &o,
                "STRATA_GC_MIN_GARBAGE",
                raw.gc_min_garbage.as_ref(),
                parse_bytes,
            )?
            .unwrap_or(64 << 20),
            disk_min_free: setting(
                &o,
                "STRATA_DISK_MIN_FREE",
                raw.disk_min_free.as_ref(),
                parse_fraction,
            )?
            .unwrap_or(0.05),
            shutdown_grace_s: setting(
                &o,
                "STRATA_SHUTDOWN_GRACE",
                raw.shutdown_grace.as_ref(),
                parse_seconds,
            )?
            .unwrap_or(120) as u64,
            max_body: setting(&o, "STRATA_MAX_BODY", raw.max_body.as_ref(), parse_bytes)?
                .unwrap_or(64 << 10)
                .min(16 << 20) as usize,
            tokens,
            token_file: env("STRATA_TOKEN_FILE")
                .map(PathBuf::from)
                .or(raw.token_file),
            restore_roots: roots(
                file,
                "restore_roots",
                "STRATA_RESTORE_ROOTS",
                &raw.restore_roots,
            )?,
            backup_roots: roots(
                file,
                "backup_roots",
                "STRATA_BACKUP_ROOTS",
                &raw.backup_roots,
            )?,
            jobs,
            pg_archive: raw
                .postgres_archive
                .as_ref()
                .map(|p| pg_archive(&o, p))
                .transpose()?,
        };
        config.check(file)?;
        Ok(config)
    }

    /// What no single setting shows: a relative token file, an open public address.
    fn check(&self, file: &str) -> Result<()> {
        if let Some(t) = &self.token_file
            && !t.is_absolute()
        {
            bail!("{file}: token_file {} is not an absolute path", t.display());
        }
        if !self.listen.ip().is_loopback() && self.tokens.is_empty() {
            bail!(
                "{file}: listen {} is not a loopback address, and no [[token]] is configured: \
                 anyone who can reach it could run restores; add a token (`strata serve \
                 --new-token NAME`) or listen on 127.0.0.1",
                self.listen
            );
        }
        Ok(())
    }
}

fn listen(o: &Origin, raw: &FileConfig) -> Result<SocketAddr> {
    Ok(setting(o, "STRATA_LISTEN", raw.listen.as_ref(), |s| {
        s.parse::<SocketAddr>()
            .map_err(|_| anyhow!("listen {s:?}: expected IP:PORT such as 127.0.0.1:7433"))
    })?
    .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address")))
}

fn json_logs(o: &Origin, raw: &FileConfig) -> Result<bool> {
    Ok(setting(
        o,
        "STRATA_LOG_FORMAT",
        raw.log_format.as_ref(),
        |s| match s {
            "text" => Ok(false),
            "json" => Ok(true),
            _ => bail!("log_format {s:?}: expected text or json"),
        },
    )?
    .unwrap_or(false))
}

/// The file's `[[token]]` entries, then those of `STRATA_API_TOKEN_BLAKE3`.
fn tokens(o: &Origin, from_file: &[FileToken]) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    for t in from_file {
        tokens.push(Token {
            name: t.name.clone(),
            hash: parse_token_hash(t.blake3.get_ref())
                .map_err(|e| anyhow!("{}: {e}", o.at(&t.blake3)))?,
        });
    }
    if let Some(v) = env("STRATA_API_TOKEN_BLAKE3") {
        for (i, h) in v.split(',').enumerate() {
            tokens.push(Token {
                name: format!("env-{}", i + 1),
                hash: parse_token_hash(h).map_err(|e| anyhow!("STRATA_API_TOKEN_BLAKE3: {e}"))?,
            });
        }
    }
    Ok(tokens)
}

fn pg_archive(o: &Origin, p: &FilePgArchive) -> Result<PgArchive> {
    let seconds = |s: Option<&Spanned<String>>| -> Result<Option<i64>> {
        s.map(|s| {
            parse_seconds(s.get_ref())
                .and_then(|v| {
                    if v < 1 {
                        bail!("{:?} is shorter than a second", s.get_ref())
                    }
                    Ok(v)
                })
                .map_err(|e| anyhow!("{}: {e:#}", o.at(s)))
        })
        .transpose()
    };
    if let Some(db) = &p.db
        && db.trim().is_empty()
    {
        bail!(
            "{}: [postgres_archive] db is empty: give a connection string, or leave it out",
            o.file
        );
    }
    Ok(PgArchive {
        db: p.db.clone(),
        stall_after_s: seconds(p.stall_after.as_ref())?.unwrap_or(600),
        check_every_s: seconds(p.check_every.as_ref())?.unwrap_or(30),
    })
}

/// The file's `[[job]]` entries, or else the job `default` that `STRATA_BACKUP_PATHS` defines.
fn jobs(o: &Origin, from_file: &[FileJob]) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut file_jobs: Vec<&FileJob> = from_file.iter().collect();
    let from_env: FileJob;
    if file_jobs.is_empty()
        && let Some(paths) = env("STRATA_BACKUP_PATHS")
    {
        let mut job = FileJob {
            name: Spanned::new(0..0, "default".to_string()),
            paths: std::env::split_paths(&paths).collect(),
            sqlite: vec![],
            postgres: vec![],
            pg_base: vec![],
            redis: vec![],
            commands: vec![],
            exclude: vec![],
            tags: vec![],
            kind: None,
            schedule: None,
            on_start: None,
            retention: None,
            max_snapshots: None,
            alert_after: None,
            follow: None,
            pitr_window: None,
        };
        // STRATA_FOLLOW: databases (as PATH lists are written) backed up and followed.
        if let Some(dbs) = env("STRATA_FOLLOW") {
            job.sqlite = std::env::split_paths(&dbs)
                .map(|p| p.display().to_string())
                .collect();
            job.follow = Some(true);
        }
        from_env = job;
        file_jobs.push(&from_env);
    }
    for j in file_jobs {
        jobs.push(job(o, j)?);
    }
    for (i, j) in jobs.iter().enumerate() {
        if jobs[..i].iter().any(|k| k.name == j.name) {
            bail!("{}: two jobs are named {:?}", o.file, j.name);
        }
    }
    let mut followed = std::collections::HashSet::new();
    for j in jobs.iter().filter(|j| j.follow) {
        for db in &j.sqlite {
            let abs = std::path::absolute(db).unwrap_or_else(|_| PathBuf::from(db));
            if !followed.insert(abs) {
                bail!(
                    "{}: {db} is followed by two jobs; a database has one follower",
                    o.file
                );
            }
        }
    }
    Ok(jobs)
}

fn job(o: &Origin, j: &FileJob) -> Result<Job> {
    let name = parse_name(j.name.get_ref()).map_err(|e| anyhow!("{}: {e}", o.at(&j.name)))?;
    if j.paths.is_empty()
        && j.sqlite.is_empty()
        && j.postgres.is_empty()
        && j.pg_base.is_empty()
        && j.redis.is_empty()
        && j.commands.is_empty()
    {
        bail!(
            "{}: job {name:?} has no sources (paths, sqlite, postgres, pg_base, redis or \
             commands)",
            o.at(&j.name)
        );
    }
    // The connection string itself is `backup --pg-base`'s to check.
    for b in &j.pg_base {
        if b.trim().is_empty() {
            bail!(
                "{}: job {name:?}: pg_base {b:?}: expected CONNSTR[=NAME]",
                o.at(&j.name)
            );
        }
    }
    for c in &j.commands {
        if !matches!(c.rsplit_once('='), Some((cmd, n)) if !cmd.trim().is_empty() && !n.is_empty())
        {
            bail!(
                "{}: job {name:?}: command {c:?}: expected COMMAND=NAME",
                o.at(&j.name)
            );
        }
    }
    let schedule = match job_setting(o, "STRATA_BACKUP_SCHEDULE", j.schedule.as_ref(), |s| {
        Schedule::parse(s).map_err(Into::into)
    })? {
        Some(s) => Some(s),
        None => env("STRATA_BACKUP_INTERVAL")
            .map(|v| {
                Schedule::parse(&format!("every {v}"))
                    .map_err(|e| anyhow!("STRATA_BACKUP_INTERVAL: {e}"))
            })
            .transpose()?,
    };
    let mut retention = job_setting(o, "STRATA_RETENTION", j.retention.as_ref(), |s| {
        Policy::parse(s).map_err(Into::into)
    })?;
    if retention.is_none()
        && let Some(days) = env("STRATA_RETENTION_DAYS")
    {
        let d: u32 = days
            .parse()
            .map_err(|_| anyhow!("STRATA_RETENTION_DAYS: expected a number of days"))?;
        retention = Some(Policy::parse(&format!("keep-within={d}d"))?);
    }
    let max_snapshots = match j.max_snapshots {
        Some(n) => Some(n),
        None => env("STRATA_MAX_SNAPSHOTS")
            .map(|v| {
                v.parse::<usize>()
                    .map_err(|_| anyhow!("STRATA_MAX_SNAPSHOTS: expected a count"))
            })
            .transpose()?,
    };
    if max_snapshots == Some(0) {
        bail!(
            "{}: job {name:?}: max_snapshots must be at least 1",
            o.at(&j.name)
        );
    }
    let on_start = match j.on_start {
        Some(b) => b,
        None => match env("STRATA_ON_START").as_deref() {
            Some("1" | "true" | "yes") => true,
            Some("0" | "false" | "no") | None => false,
            Some(v) => bail!("STRATA_ON_START: expected true or false, got {v:?}"),
        },
    };
    let follow = j.follow.unwrap_or(false);
    if follow && j.sqlite.is_empty() {
        bail!(
            "{}: job {name:?}: follow = true follows the job's sqlite databases, and it has none",
            o.at(&j.name)
        );
    }
    let kind = job_setting(o, "STRATA_BACKUP_KIND", j.kind.as_ref(), parse_kind)?
        .unwrap_or_else(|| "manual".to_string());
    if (retention.is_some() || max_snapshots.is_some())
        && strata::retention::PROTECTED_KINDS.contains(&kind.as_str())
    {
        bail!(
            "{}: job {name:?}: {kind} snapshots are kept until deleted, so a retention policy \
             would never remove one; give the job a kind such as hourly or daily",
            o.at(&j.name)
        );
    }
    Ok(Job {
        paths: j.paths.clone(),
        sqlite: j.sqlite.clone(),
        postgres: j.postgres.clone(),
        pg_base: j.pg_base.clone(),
        redis: j.redis.clone(),
        commands: j.commands.clone(),
        exclude: j.exclude.clone(),
        tags: j.tags.clone(),
        kind,
        schedule,
        on_start,
        retention,
        max_snapshots,
        alert_after_s: job_setting(
            o,
            "STRATA_ALERT_AFTER",
            j.alert_after.as_ref(),
            parse_seconds,
        )?
        .unwrap_or(25 * 3600),
        follow,
        pitr_window_s: job_setting(
            o,
            "STRATA_PITR_WINDOW",
            j.pitr_window.as_ref(),
            parse_seconds,
        )?
        .unwrap_or(24 * 3600),
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
repo = "/tmp/repo"
listen = "127.0.0.1:7999"

[[token]]
name = "ops"
blake3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"

[[job]]
name = "app"
paths = ["/srv/app"]
sqlite = ["/srv/app.db"]
schedule = "daily 02:00"
kind = "daily"
retention = "keep-daily=7,keep-weekly=4"
on_start = true
"#;

    #[test]
    fn reads_a_good_file() {
        let c = ServeConfig::parse(GOOD, "strata.toml").unwrap();
        assert_eq!(c.listen.port(), 7999);
        assert_eq!(c.tokens.len(), 1);
        assert_eq!(c.jobs.len(), 1);
        let j = &c.jobs[0];
        assert_eq!(j.kind, "daily");
        assert!(j.on_start);
        assert_eq!(j.retention.as_ref().unwrap().keep_daily, Some(7));
        assert_eq!(j.alert_after_s, 25 * 3600);
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (GOOD.replace("daily 02:00", "daily 26:00"), 13, "schedule"),
            (
                GOOD.replace("keep-daily=7", "keep-dayly=7"),
                15,
                "retention rule",
            ),
            (GOOD.replace("on_start", "on_strat"), 16, "unknown field"),
            (GOOD.replace("\"daily\"", "\"sometimes\""), 14, "kind"),
            (GOOD.replace("af1349", "zz1349"), 7, "blake3"),
            (GOOD.replace("127.0.0.1:7999", "localhost"), 3, "listen"),
            (
                GOOD.replace("name = \"app\"", "name = \"a b\""),
                10,
                "job name",
            ),
        ];
        for (text, line, what) in cases {
            let e = format!(
                "{:#}",
                ServeConfig::parse(&text, "strata.toml").unwrap_err()
            );
            assert!(
                e.starts_with(&format!("strata.toml:{line}:")) && e.contains(what),
                "expected line {line} and {what:?}: {e}"
            );
        }
    }

    #[test]
    fn follow_needs_databases_and_one_job_per_database() {
        let on = GOOD.replace(
            "on_start = true",
            "on_start = true\nfollow = true\npitr_window = \"2d\"",
        );
        let job = &ServeConfig::parse(&on, "strata.toml").unwrap().jobs[0];
        assert!(job.follow);
        assert_eq!(job.pitr_window_s, 2 * 86400);
        let none = on.replace("sqlite = [\"/srv/app.db\"]\n", "");
        let e = format!(
            "{:#}",
            ServeConfig::parse(&none, "strata.toml").unwrap_err()
        );
        assert!(e.contains("has none"), "{e}");
        let twice =
            format!("{on}\n[[job]]\nname = \"again\"\nsqlite = [\"/srv/app.db\"]\nfollow = true\n");
        let e = format!(
            "{:#}",
            ServeConfig::parse(&twice, "strata.toml").unwrap_err()
        );
        assert!(e.contains("followed by two jobs"), "{e}");
    }

    #[test]
    fn token_hints_name_the_option_that_exists() {
        let bad = GOOD.replace("af1349", "zz1349");
        let e = format!("{:#}", ServeConfig::parse(&bad, "s.toml").unwrap_err());
        assert!(e.contains("strata serve --new-token NAME"), "{e}");
        let open = format!(
            "{:#}",
            ServeConfig::parse("listen = \"0.0.0.0:7433\"\n", "s.toml").unwrap_err()
        );
        assert!(open.contains("--new-token NAME"), "{open}");
    }

    #[test]
    fn refuses_an_open_public_address() {
        let text = "listen = \"0.0.0.0:7433\"\n";
        let e = format!("{:#}", ServeConfig::parse(text, "s.toml").unwrap_err());
        assert!(e.contains("not a loopback address"), "{e}");
        let with_token = GOOD.replace("127.0.0.1:7999", "0.0.0.0:7999");
        assert!(ServeConfig::parse(&with_token, "s.toml").is_ok());
    }

    #[test]
    fn roots_and_the_token_file_are_absolute_paths() {
        let text = "restore_roots = [\"/srv/restore\"]\nbackup_roots = [\"/srv/a\", \"/srv/b\"]\n\
                    token_file = \"/run/strata/token\"\n";
        let c = ServeConfig::parse(text, "s.toml").unwrap();
        assert_eq!(c.restore_roots, [PathBuf::from("/srv/restore")]);
        assert_eq!(c.backup_roots.len(), 2);
        assert_eq!(c.token_file, Some(PathBuf::from("/run/strata/token")));
        let c = ServeConfig::parse("", "s.toml").unwrap();
        assert!(c.restore_roots.is_empty() && c.backup_roots.is_empty());
        for bad in [
            "restore_roots = [\"restore\"]\n",
            "backup_roots = [\"./b\"]\n",
            "token_file = \"token\"\n",
        ] {
            let e = format!("{:#}", ServeConfig::parse(bad, "s.toml").unwrap_err());
            assert!(e.contains("not an absolute path"), "{e}");
        }
    }

    #[test]
    fn base_backups_are_a_source_and_the_archive_watch_has_defaults() {
        let text = "[[job]]\nname = \"pg\"\npg_base = [\"host=/run/postgresql=main\"]\n";
        let c = ServeConfig::parse(text, "s.toml").unwrap();
        assert_eq!(c.jobs[0].pg_base, ["host=/run/postgresql=main"]);
        assert!(c.pg_archive.is_none());
        let c = ServeConfig::parse(&format!("{text}[postgres_archive]\n"), "s.toml").unwrap();
        let w = c.pg_archive.unwrap();
        assert_eq!((w.db, w.stall_after_s, w.check_every_s), (None, 600, 30));
        let set = "[postgres_archive]\ndb = \"dbname=postgres\"\nstall_after = \"5m\"\n";
        let w = ServeConfig::parse(set, "s.toml")
            .unwrap()
            .pg_archive
            .unwrap();
        assert_eq!(
            (w.db.as_deref(), w.stall_after_s),
            (Some("dbname=postgres"), 300)
        );
        for (bad, what) in [
            ("[postgres_archive]\nstall_after = \"soon\"\n", "s.toml:2:"),
            ("[postgres_archive]\ndb = \" \"\n", "db is empty"),
            ("[postgres_archive]\nstal_after = \"5m\"\n", "unknown field"),
            (
                "[[job]]\nname = \"x\"\npg_base = [\"\"]\n",
                "CONNSTR[=NAME]",
            ),
        ] {
            let e = format!("{:#}", ServeConfig::parse(bad, "s.toml").unwrap_err());
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_a_job_without_sources_and_duplicate_names() {
        let e = ServeConfig::parse("[[job]]\nname = \"x\"\n", "s.toml").unwrap_err();
        assert!(format!("{e:#}").contains("no sources"), "{e:#}");
        let two = format!("{GOOD}\n[[job]]\nname = \"app\"\npaths = [\"/x\"]\n");
        let e = ServeConfig::parse(&two, "s.toml").unwrap_err();
        assert!(format!("{e:#}").contains("two jobs"), "{e:#}");
    }
}
