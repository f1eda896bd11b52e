//! Repositories on S3-compatible object storage (`s3://BUCKET/PREFIX`), through `object_store`.
//!
//! Every repository object (packs, manifests, config, keys, settings) is an S3 object under
//! PREFIX, with the same names as in a local repository. Writes are single PUTs of complete
//! objects (S3 never shows a partial object), so the write order of a local repository holds:
//! packs are uploaded, verified, before the manifest that makes a snapshot visible.
//! Requests are retried with exponential backoff on transient errors (5xx, timeouts, resets).

use crate::error::{Error, Result};

#[cfg(feature = "s3")]
mod backend;
#[cfg(feature = "s3")]
pub use backend::*;
#[cfg(feature = "s3")]
pub mod settings;

/// What the program using strata decides for every repository on object storage it opens. Set
/// once, before the first repository is opened ([`configure`]); the defaults otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// How long a writer's lease lasts unless renewed; it is renewed every quarter of it, and a
    /// change is refused when less than a third of it is left. Held between 3 s and an hour.
    pub lease: std::time::Duration,
    /// The settings file, when the program names one: it must then exist. Otherwise
    /// `$XDG_CONFIG_HOME/strata/s3.toml` (or `~/.config/strata/s3.toml`) if present.
    pub settings_file: Option<std::path::PathBuf>,
    /// Print what this process asked of the store (requests and bytes) on stderr when a
    /// connection is dropped.
    pub report_requests: bool,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            lease: std::time::Duration::from_secs(60),
            settings_file: None,
            report_requests: false,
        }
    }
}

static OPTIONS: std::sync::OnceLock<S3Options> = std::sync::OnceLock::new();

/// Sets the [`S3Options`] of this process. An error if they were set, or used, already: a
/// repository opened before would have run under other ones.
pub fn configure(options: S3Options) -> Result<()> {
    OPTIONS
        .set(options)
        .map_err(|_| Error::invalid("the S3 options are set once, before any use"))
}

/// The options in force: those given to [`configure`], else the defaults.
pub fn options() -> &'static S3Options {
    OPTIONS.get_or_init(S3Options::default)
}

/// Where an S3 repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX]`; `Ok(None)` for anything that is not an `s3://` URL.
    pub fn parse(repo: &str) -> Result<Option<S3Location>> {
        let Some(rest) = repo.strip_prefix("s3://") else {
            return Ok(None);
        };
        let bad = |why: &str| Error::invalid(format!("repository URL {repo:?}: {why}"));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            || bucket.starts_with(['-', '.'])
            || bucket.ends_with(['-', '.'])
        {
            return Err(bad(
                "a bucket name is 3 to 63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix
            .split('/')
            .any(|s| !prefix.is_empty() && (s.is_empty() || s == "." || s == ".."))
            || prefix.contains(['\\', '\0', '?', '#'])
        {
            return Err(bad(
                "the prefix must be plain path segments such as backups/app",
            ));
        }
        Ok(Some(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        }))
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repository_urls() {
        assert_eq!(S3Location::parse("/var/lib/strata").unwrap(), None);
        let l = S3Location::parse("s3://backups/app/prod/")
            .unwrap()
            .unwrap();
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("backups", "app/prod")
        );
        assert_eq!(l.to_string(), "s3://backups/app/prod");
        let l = S3Location::parse("s3://my.bucket-1").unwrap().unwrap();
        assert_eq!(l.prefix, "");
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper/x",
            "s3://-bucket/x",
            "s3://bucket/a//b",
            "s3://bucket/../x",
            "s3://bucket/a?b",
        ] {
            let e = S3Location::parse(bad).unwrap_err().to_string();
            assert!(e.contains("repository URL"), "{bad}: {e}");
        }
    }
}
