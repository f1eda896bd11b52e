//! `strata init` and `strata backup`.

use super::output::{bytes, print_json};
use super::{EXIT_PARTIAL, RepoPath, create_default, open};
use anyhow::{Context, Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use strata::backup::{BackupOptions, BackupReport, NamedPath, backup as run_backup};
use strata::chunker::ChunkerParams;
use strata::hooks::Hooks;
use strata::repo::{Config, Repo};
use strata::source::capture::CaptureOptions;
use strata::source::streams::{StreamFrom, StreamSource};

pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata init --repo /var/lib/strata/repo\n  strata init --repo /backups/app --encrypt\n  strata init --repo s3://bucket/prefix"
)]
pub struct InitArgs {
    /// Smallest chunk (e.g. 2k, 2KiB, 2048)
    #[arg(long, value_parser = parse_size)]
    chunk_min: Option<u32>,
    /// Average chunk size, a power of two
    #[arg(long, value_parser = parse_size)]
    chunk_avg: Option<u32>,
    /// Largest chunk
    #[arg(long, value_parser = parse_size)]
    chunk_max: Option<u32>,
    /// zstd compression level (negative levels are faster)
    #[arg(long, default_value_t = DEFAULT_ZSTD_LEVEL, allow_negative_numbers = true)]
    zstd_level: i32,
    /// Cut SQLite files like any other file instead of at page boundaries
    #[arg(long)]
    no_sqlite_pages: bool,
    /// Encrypt the repository; the passphrase comes from STRATA_PASSWORD, --password-file or
    /// a prompt
    #[arg(long)]
    encrypt: bool,
    /// With --encrypt: use the master key of this encrypted repository (and its chunk sizes), so
    /// `strata copy` can move snapshots between the two (its passphrase: STRATA_FROM_PASSWORD,
    /// STRATA_FROM_PASSWORD_FILE, or the new repository's)
    #[arg(long, value_name = "SRC", requires = "encrypt")]
    same_key_as: Option<PathBuf>,
}

/// A chunk size (`4096`, `16k`, `16KiB`, `1m`).
pub fn parse_size(s: &str) -> Result<u32, String> {
    let n = super::output::parse_bytes(s)?;
    u32::try_from(n).map_err(|_| format!("size too large: {s:?}"))
}

pub fn init(rp: &RepoPath, args: InitArgs) -> Result<ExitCode> {
    let d = ChunkerParams::default();
    let params = ChunkerParams {
        min: args.chunk_min.unwrap_or(d.min),
        avg: args.chunk_avg.unwrap_or(d.avg),
        max: args.chunk_max.unwrap_or(d.max),
    };
    let mut config = Config::new(params, args.zstd_level)?;
    config.sqlite_pages = !args.no_sqlite_pages;
    let created = if args.encrypt {
        let pass = if super::environment::passphrase_given(rp.password_file.as_deref()) {
            rp.passphrase()?
        } else {
            super::key::prompt_twice("passphrase for the new repository: ")?
        };
        let mut enc = strata::repo::Encryption::new(&pass);
        enc.kdf_memory_kib = super::environment::kdf_memory_kib();
        if let Some(src) = &args.same_key_as {
            let src = super::copy::open_source(src, rp, false, "init")?;
            let Some(keys) = src.keys() else {
                bail!("--same-key-as: {} is not encrypted", src.root.display());
            };
            config.chunker = src.config.chunker;
            config.sqlite_pages = src.config.sqlite_pages;
            enc.master = Some(*keys.master());
        }
        Repo::init_encrypted(&rp.path, config, &enc)
    } else {
        Repo::init(&rp.path, config)
    };
    let repo = created.with_context(|| format!("creating repository {}", rp.path.display()))?;
    let c = &repo.config.chunker;
    println!(
        "created {}repository {} (chunks {}/{}/{} bytes, zstd level {})",
        if args.encrypt { "encrypted " } else { "" },
        rp.path.display(),
        c.min,
        c.avg,
        c.max,
        repo.config.zstd_level
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
#[command(
    after_help = "Examples:\n  strata backup ~/app\n  strata backup --sqlite /srv/app/app.db /srv/app/memory --kind hourly\n  strata backup --postgres 'host=/run/postgresql dbname=app' --name nightly\n  strata backup -x / --exclude '*.tmp' --dry-run"
)]
pub struct BackupArgs {
    /// Files and directories to snapshot (one snapshot holds them all)
    #[arg(required_unless_present_any = ["from_command", "stdin", "sqlite", "postgres", "pg_base", "redis", "files_from"])]
    paths: Vec<PathBuf>,
    /// A SQLite database, read through SQLite as one consistent image while writers go on;
    /// stored as NAME (default: its file name) (repeatable)
    #[arg(long, value_name = "DB[=NAME]")]
    sqlite: Vec<String>,
    /// A PostgreSQL database, stored as the plain-format output of `pg_dump` (a keyword/value
    /// string such as 'host=/run/postgresql dbname=app' or a postgresql:// URL; add =NAME to
    /// choose the stored name, default DBNAME.sql) (repeatable)
    #[arg(long, value_name = "CONNSTR[=NAME]")]
    postgres: Vec<String>,
    /// A PostgreSQL server's physical base backup, streamed by `pg_basebackup` (a user with
    /// REPLICATION) and stored as a directory cut at 8 KiB pages, so the next one stores only
    /// the pages that changed; with the WAL archive (`strata pg archive-wal`), `strata pg
    /// restore` recovers it to any moment. Add =NAME to choose the directory's name, default
    /// pgdata (repeatable)
    #[arg(long = "pg-base", value_name = "CONNSTR[=NAME]")]
    pg_base: Vec<String>,
    /// A Redis server, stored as the RDB file `redis-cli --rdb` fetches (a redis:// URL or a
    /// Unix socket path; add =NAME to choose the stored name, default redis.rdb) (repeatable)
    #[arg(long, value_name = "URL[=NAME]")]
    redis: Vec<String>,
    /// Also store the standard output of a shell command as NAME, e.g.
    /// `--from-command 'pg_dump mydb'=mydb.sql`; the snapshot fails if the command does
    /// (repeatable)
    #[arg(long = "from-command", value_name = "'CMD'=NAME")]
    from_command: Vec<String>,
    /// Also store standard input as NAME
    #[arg(long, value_name = "NAME")]
    stdin: Option<String>,
    /// A name to find the snapshot by
    #[arg(long)]
    name: Option<String>,
    /// Tags (repeatable)
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Kind of snapshot, used by retention policies
    #[arg(long, default_value = "manual", value_parser = ["manual", "hourly", "daily", "weekly", "monthly", "restore-point"])]
    kind: String,
    /// Leave out paths matching this pattern (repeatable): `*.tmp` matches names anywhere,
    /// `logs/*.gz` paths below a source, `**` any depth
    #[arg(long = "exclude")]
    excludes: Vec<String>,
    /// Read exclusion patterns from FILE, one per line (blank lines and lines starting with #
    /// are ignored) (repeatable)
    #[arg(long = "exclude-file", value_name = "FILE")]
    exclude_files: Vec<PathBuf>,
    /// Read the paths to back up from FILE, one per line (blank lines and lines starting with #
    /// are ignored), besides any given as arguments
    #[arg(long = "files-from", value_name = "FILE")]
    files_from: Option<PathBuf>,
    /// Do not enter directories on another file system than their source (`/proc`, `/sys`,
    /// other mounts below `/`): they are recorded empty
    #[arg(long, short = 'x')]
    one_file_system: bool,
    /// Say what a backup would read and store, without reading, running or writing anything
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// Copy SQLite databases as plain files (with their -wal/-shm/-journal files) instead of
    /// reading a consistent image through SQLite
    #[arg(long)]
    raw_sqlite: bool,
    /// A directory whose files must agree with each other, captured as one store: all its files
    /// from one quiet moment, its SQLite databases last (ChromaDB directories are recognised
    /// without it) (repeatable)
    #[arg(long = "group", value_name = "DIR")]
    groups: Vec<PathBuf>,
    /// How many more times a file or store that changed while it was read is read again
    #[arg(long, value_name = "N", default_value_t = CaptureOptions::default().retries)]
    capture_retries: u32,
    /// How long a store's files must have been quiet before it is read, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = CaptureOptions::default().settle.as_millis() as u64)]
    settle_ms: u64,
    /// The most time one store may take to capture, in seconds
    #[arg(long, value_name = "SECS", default_value_t = CaptureOptions::default().timeout.as_secs())]
    capture_timeout: u64,
    /// Record what kept changing while it was read, marked as possibly inconsistent, instead
    /// of failing the snapshot
    #[arg(long)]
    allow_unstable: bool,
    /// A shell command to run before the capture (e.g. one that pauses the application); the
    /// backup fails if it fails
    #[arg(long, value_name = "CMD")]
    before: Option<String>,
    /// A shell command to run after the capture, whether it succeeded or not
    #[arg(long, value_name = "CMD")]
    after: Option<String>,
    /// Seconds a hook may run before it is killed (and counts as failed)
    #[arg(long, value_name = "SECS", default_value_t = Hooks::default().timeout.as_secs())]
    hook_timeout: u64,
    /// Machine-readable output
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct BackupJson<'a> {
    id: String,
    time: String,
    partial: bool,
    stats: &'a strata::manifest::SnapshotStats,
    warnings: &'a [String],
    errors: &'a [String],
    /// Stores, and files that changed while they were read.
    captures: &'a [strata::manifest::Capture],
    /// The after hook's failure (the snapshot is saved).
    after_hook_error: Option<&'a str>,
    /// Wall milliseconds per phase, in order.
    phases: Vec<PhaseJson>,
}

#[derive(serde::Serialize)]
struct PhaseJson {
    phase: &'static str,
    ms: f64,
}

/// libpq connection keywords: `KEY=VALUE` with one of these keys is part of the connection
/// string, not a stored name.
const PG_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "requiressl",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

/// Splits `CONNSTR[=NAME]`. The last word (or URL query parameter) holds the name when it has
/// an `=` more than a connection parameter would: `dbname=app=app.sql`, `app=app.sql`,
/// `postgresql://host/app=app.sql`.
fn split_postgres(spec: &str) -> (String, Option<String>) {
    let tail_start = spec
        .rfind(|c: char| c.is_whitespace() || c == '&' || c == '?')
        .map_or(0, |i| i + 1);
    let tail = &spec[tail_start..];
    let equals = tail.matches('=').count();
    let is_url = spec.contains("://");
    let in_query = is_url && spec[..tail_start].contains('?');
    let named = match equals {
        0 => false,
        1 if is_url => !in_query,
        1 => {
            let key = tail.split('=').next().unwrap_or("");
            !PG_KEYWORDS.contains(&key)
        }
        _ => true,
    };
    match spec.rsplit_once('=') {
        Some((conn, name)) if named && !name.is_empty() => {
            (conn.to_string(), Some(name.to_string()))
        }
        _ => (spec.to_string(), None),
    }
}

/// The database a connection string names, for the default stored name.
fn postgres_dbname(conn: &str) -> String {
    let name = if let Some((_, rest)) = conn.split_once("://") {
        rest.split(['?', '#'])
            .next()
            .and_then(|r| r.split_once('/'))
            .map(|(_, db)| db.to_string())
            .unwrap_or_default()
    } else if conn.contains('=') {
        conn.split_whitespace()
            .find_map(|kv| kv.strip_prefix("dbname="))
            .unwrap_or("")
            .to_string()
    } else {
        conn.trim().to_string()
    };
    if name.is_empty() || name.contains('/') {
        "postgres".to_string()
    } else {
        name
    }
}

/// The lines of a list file (`--files-from`, `--exclude-file`): blank lines and lines starting
/// with `#` left out.
fn read_list(path: &std::path::Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the list {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect())
}

pub fn backup(rp: &RepoPath, mut args: BackupArgs) -> Result<ExitCode> {
    if let Some(list) = &args.files_from {
        let listed = read_list(list)?;
        if listed.is_empty() && args.paths.is_empty() {
            bail!("{} lists no paths to back up", list.display());
        }
        args.paths.extend(listed.into_iter().map(PathBuf::from));
    }
    for list in &args.exclude_files {
        let patterns = read_list(list)?;
        args.excludes.extend(patterns);
    }
    for p in &args.paths {
        if std::fs::symlink_metadata(p).is_err() {
            bail!("{}: no such file or directory", p.display());
        }
    }
    if args.dry_run {
        return dry_run(rp, &args);
    }
    let streams = streams(&args)?;
    let databases = databases(&args);
    let repo = if rp.is_default && !rp.path.join(strata::repo::CONFIG_NAME).exists() {
        let repo = create_default(rp)?;
        eprintln!("created repository {}", rp.path.display());
        repo
    } else {
        open(rp, true, "backup")?
    };
    let bar = super::output::byte_bar(args.json);
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    let plan = |total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
        }
    };
    let opts = BackupOptions {
        sources: args.paths.clone(),
        name: args.name.clone(),
        tags: args.tags.clone(),
        kind: args.kind.clone(),
        excludes: args.excludes.clone(),
        one_file_system: args.one_file_system,
        progress: Some(&progress),
        on_plan: Some(&plan),
        raw_sqlite: args.raw_sqlite,
        databases,
        streams,
        pg_bases: pg_bases(&args)?,
        capture: CaptureOptions {
            retries: args.capture_retries,
            settle: Duration::from_millis(args.settle_ms),
            timeout: Duration::from_secs(args.capture_timeout),
            allow_unstable: args.allow_unstable,
            groups: args.groups.clone(),
        },
        hooks: Hooks {
            before: args.before.clone(),
            after: args.after.clone(),
            timeout: Duration::from_secs(args.hook_timeout),
        },
    };
    let report = run_backup(&repo, &opts).context("backup failed; nothing was recorded")?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    print_report(&report, args.json)?;
    Ok(exit_code(&report))
}

/// `backup --dry-run`: the walk and the file cache, then what a backup would read; nothing is
/// read, run or written.
fn dry_run(rp: &RepoPath, args: &BackupArgs) -> Result<ExitCode> {
    if rp.is_default && !rp.path.join(strata::repo::CONFIG_NAME).exists() {
        bail!(
            "there is no repository at {} yet (a backup would create it); nothing to compare with",
            rp.path.display()
        );
    }
    let repo = open(rp, false, "backup")?;
    let mut opts = BackupOptions::new(args.paths.clone());
    opts.excludes = args.excludes.clone();
    opts.one_file_system = args.one_file_system;
    opts.raw_sqlite = args.raw_sqlite;
    opts.databases = databases(args);
    opts.capture.groups = args.groups.clone();
    let plan = strata::backup::plan(&repo, &opts)?;
    let unrun = args.from_command.len()
        + args.postgres.len()
        + args.pg_base.len()
        + args.redis.len()
        + usize::from(args.stdin.is_some());
    if args.json {
        #[derive(serde::Serialize)]
        struct PlanJson<'a> {
            files: u64,
            dirs: u64,
            symlinks: u64,
            bytes: u64,
            files_to_read: u64,
            bytes_to_read: u64,
            /// Streams (commands, dumps, standard input) a backup would run, not run here.
            streams_not_run: usize,
            warnings: &'a [String],
            errors: &'a [String],
        }
        super::output::print_json(&PlanJson {
            files: plan.files,
            dirs: plan.dirs,
            symlinks: plan.symlinks,
            bytes: plan.bytes,
            files_to_read: plan.files_to_read,
            bytes_to_read: plan.bytes_to_read,
            streams_not_run: unrun,
            warnings: &plan.warnings,
            errors: &plan.errors,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    for e in &plan.errors {
        eprintln!("error: {e}");
    }
    println!(
        "would back up {} files ({}), {} directories, {} symbolic links",
        plan.files,
        super::output::bytes(plan.bytes),
        plan.dirs,
        plan.symlinks
    );
    println!(
        "would read {} of them ({}): new or changed since they were last stored; the rest \
         comes from the file cache",
        plan.files_to_read,
        super::output::bytes(plan.bytes_to_read)
    );
    if unrun > 0 {
        println!("{unrun} stream(s) (commands, dumps, standard input) not run in a dry run");
    }
    println!("dry run: nothing was read or written");
    Ok(ExitCode::SUCCESS)
}

/// The base backups to take (`--pg-base`).
fn pg_bases(args: &BackupArgs) -> Result<Vec<strata::pg::base::PgBaseSource>> {
    let mut bases = Vec::new();
    for spec in &args.pg_base {
        let (conn, name) = split_postgres(spec);
        if conn.trim().is_empty() {
            bail!("--pg-base {spec:?}: expected a connection string");
        }
        bases.push(strata::pg::base::PgBaseSource {
            name: name.unwrap_or_else(|| "pgdata".to_string()),
            conn,
        });
    }
    Ok(bases)
}

/// The streams to store: `--from-command`, `--postgres`, `--redis` and `--stdin`, in that order.
fn streams(args: &BackupArgs) -> Result<Vec<StreamSource>> {
    let mut streams = Vec::new();
    for spec in &args.from_command {
        match spec.rsplit_once('=') {
            Some((cmd, name)) if !cmd.trim().is_empty() && !name.is_empty() => {
                streams.push(StreamSource {
                    name: name.to_string(),
                    from: StreamFrom::Command(cmd.to_string()),
                })
            }
            _ => super::usage!("--from-command {spec:?}: expected 'COMMAND'=NAME"),
        }
    }
    for spec in &args.postgres {
        let (conn, name) = split_postgres(spec);
        if conn.trim().is_empty() {
            bail!("--postgres {spec:?}: expected a connection string");
        }
        streams.push(StreamSource {
            name: name.unwrap_or_else(|| format!("{}.sql", postgres_dbname(&conn))),
            from: StreamFrom::Postgres(conn),
        });
    }
    for spec in &args.redis {
        let (url, name) = match spec.rsplit_once('=') {
            Some((url, name)) => (url.to_string(), Some(name.to_string())),
            None => (spec.clone(), None),
        };
        if url.trim().is_empty() {
            bail!("--redis {spec:?}: expected a redis:// URL or a socket path");
        }
        streams.push(StreamSource {
            name: name.unwrap_or_else(|| "redis.rdb".to_string()),
            from: StreamFrom::Redis(url),
        });
    }
    if let Some(name) = &args.stdin {
        streams.push(StreamSource {
            name: name.clone(),
            from: StreamFrom::Stdin,
        });
    }
    Ok(streams)
}

/// The `--sqlite` databases, each `PATH` or `PATH=NAME` (a path that exists as given wins).
fn databases(args: &BackupArgs) -> Vec<NamedPath> {
    args.sqlite
        .iter()
        .map(|spec| match spec.rsplit_once('=') {
            Some((path, name)) if !std::path::Path::new(spec).exists() => NamedPath {
                path: PathBuf::from(path),
                name: Some(name.to_string()),
            },
            _ => NamedPath {
                path: PathBuf::from(spec),
                name: None,
            },
        })
        .collect()
}

/// A progress bar on a terminal, none for `--json` or when stderr is not a terminal.
/// The saved snapshot, as JSON on stdout or one line for a person, and its warnings on stderr.
fn print_report(report: &BackupReport, json: bool) -> Result<()> {
    let m = &report.manifest;
    let s = &m.stats;
    if json {
        print_json(&BackupJson {
            id: report.id.to_hex(),
            time: m.time().to_rfc3339(),
            partial: report.partial(),
            stats: s,
            warnings: &report.warnings,
            errors: &m.errors,
            captures: &m.captures,
            after_hook_error: report.after_hook_error.as_deref(),
            phases: report
                .phases_ms
                .iter()
                .map(|&(phase, ms)| PhaseJson { phase, ms })
                .collect(),
        })?;
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        let dedup = if s.bytes_read > 0 {
            // Stores (databases, streams) can add more new bytes than files were read.
            100.0 * s.bytes_read.saturating_sub(s.new_raw_bytes) as f64 / s.bytes_read as f64
        } else {
            100.0
        };
        println!(
            "snapshot {} saved{}: {} files, {} total, {} read, {} new ({} stored), {:.1}% of read bytes deduplicated, {:.2} s",
            report.id.short(),
            if report.partial() { " (PARTIAL)" } else { "" },
            s.files,
            bytes(s.bytes),
            bytes(s.bytes_read),
            bytes(s.new_raw_bytes),
            bytes(s.new_stored_bytes),
            dedup,
            s.duration_ms as f64 / 1000.0
        );
    }
    for c in m.inconsistent() {
        eprintln!(
            "warning: {} ({}) kept changing while it was read and is recorded as possibly \
             inconsistent: {}",
            c.path, c.kind, c.note
        );
    }
    Ok(())
}

/// 1 when the after hook failed (the snapshot is saved), 4 for a partial snapshot, else 0.
fn exit_code(report: &BackupReport) -> ExitCode {
    if let Some(e) = &report.after_hook_error {
        eprintln!("strata: the snapshot is saved, but {e}");
        return ExitCode::from(super::EXIT_ERROR);
    }
    if report.partial() {
        eprintln!(
            "strata: {} path(s) could not be read; the snapshot is partial",
            report.manifest.errors.len()
        );
        return ExitCode::from(EXIT_PARTIAL);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_names() {
        let cases = [
            ("app", ("app", None), "app"),
            ("app=app.sql", ("app", Some("app.sql")), "app"),
            ("dbname=app", ("dbname=app", None), "app"),
            (
                "host=/tmp dbname=app",
                ("host=/tmp dbname=app", None),
                "app",
            ),
            (
                "host=/tmp dbname=app=dump.sql",
                ("host=/tmp dbname=app", Some("dump.sql")),
                "app",
            ),
            (
                "host=/tmp port=5433",
                ("host=/tmp port=5433", None),
                "postgres",
            ),
            (
                "postgresql://u@h/app",
                ("postgresql://u@h/app", None),
                "app",
            ),
            (
                "postgresql://u@h/app=a.sql",
                ("postgresql://u@h/app", Some("a.sql")),
                "app",
            ),
            (
                "postgresql://h/app?sslmode=disable",
                ("postgresql://h/app?sslmode=disable", None),
                "app",
            ),
            (
                "postgresql://h/app?sslmode=disable=x.sql",
                ("postgresql://h/app?sslmode=disable", Some("x.sql")),
                "app",
            ),
        ];
        for (spec, (conn, name), db) in cases {
            let (c, n) = split_postgres(spec);
            assert_eq!((c.as_str(), n.as_deref()), (conn, name), "{spec}");
            assert_eq!(postgres_dbname(&c), db, "{spec}");
        }
    }
}
