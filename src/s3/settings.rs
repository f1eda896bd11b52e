//! Where and how to reach a bucket: endpoint, region and credentials, from the standard AWS
//! variables and from an optional settings file.
//!
//! The file is the one the program names ([`super::S3Options::settings_file`]; the command line
//! takes it from `STRATA_S3_CONFIG`), else `$XDG_CONFIG_HOME/strata/s3.toml`, else
//! `~/.config/strata/s3.toml` (a missing default file is no error):
//!
//! ```toml
//! endpoint = "http://127.0.0.1:3900"   # top level: used where no AWS_* variable is set
//! region = "garage"
//! access_key_id = "GK..."
//! secret_access_key_file = "/run/secrets/s3"
//!
//! [bucket.offsite]                     # for s3://offsite/...: overrides the variables too
//! endpoint = "https://s3.example.net"
//! access_key_id = "..."
//! secret_access_key = "..."
//! ```
//!
//! Precedence, per setting: the bucket's table, then the AWS_* variables, then the top level.
//! A file that holds a secret must not be readable by group or others.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One set of connection settings; every field optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A file holding the secret key (its first line), instead of `secret_access_key`.
    pub secret_access_key_file: Option<PathBuf>,
    pub session_token: Option<String>,
    /// Per-bucket tables (top level of the file only).
    #[serde(default)]
    bucket: BTreeMap<String, Endpoint>,
}

/// The file: top-level settings and `[bucket.NAME]` tables.
type File = Endpoint;

/// The settings file's path, and whether it was named explicitly.
fn file_path() -> Option<(PathBuf, bool)> {
    if let Some(p) = &super::options().settings_file {
        return Some((p.clone(), true));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some((base.join("strata/s3.toml"), false))
}

/// The settings for `bucket`: the settings file merged with the AWS_* variables.
pub fn for_bucket(bucket: &str) -> Result<Endpoint> {
    let file = match file_path() {
        Some((path, explicit)) => match std::fs::read_to_string(&path) {
            Ok(text) => {
                check_private(&path, &text)?;
                parse(&text, &path.display().to_string())?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => File::default(),
            Err(e) => return Err(Error::io_path("read S3 settings", &path, e)),
        },
        None => File::default(),
    };
    let env = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
    };
    let from_env = Endpoint {
        endpoint: env(&["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]),
        region: env(&["AWS_REGION", "AWS_DEFAULT_REGION"]),
        access_key_id: env(&["AWS_ACCESS_KEY_ID"]),
        secret_access_key: env(&["AWS_SECRET_ACCESS_KEY"]),
        secret_access_key_file: None,
        session_token: env(&["AWS_SESSION_TOKEN"]),
        bucket: BTreeMap::new(),
    };
    let mut out = merge(
        file.bucket.get(bucket).cloned().unwrap_or_default(),
        merge(from_env, file),
    );
    if let Some(path) = out.secret_access_key_file.take()
        && out.secret_access_key.is_none()
    {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io_path("read the S3 secret key", &path, e))?;
        let key = text.lines().next().unwrap_or("").trim();
        if key.is_empty() {
            return Err(Error::invalid(format!("{}: no secret key", path.display())));
        }
        out.secret_access_key = Some(key.to_string());
    }
    Ok(out)
}

/// `first`'s settings, with `second`'s where `first` has none. A secret and the file holding it
/// count as one setting.
fn merge(first: Endpoint, second: Endpoint) -> Endpoint {
    let first_has_secret =
        first.secret_access_key.is_some() || first.secret_access_key_file.is_some();
    Endpoint {
        endpoint: first.endpoint.or(second.endpoint),
        region: first.region.or(second.region),
        access_key_id: first.access_key_id.or(second.access_key_id),
        secret_access_key: if first_has_secret {
            first.secret_access_key
        } else {
            second.secret_access_key
        },
        secret_access_key_file: if first_has_secret {
            first.secret_access_key_file
        } else {
            second.secret_access_key_file
        },
        session_token: first.session_token.or(second.session_token),
        bucket: BTreeMap::new(),
    }
}

fn parse(text: &str, name: &str) -> Result<File> {
    let file: File = toml::from_str(text)
        .map_err(|e| Error::invalid(crate::codec::toml_error(text, name, &e)))?;
    for (bucket, e) in std::iter::once(("(top level)", &file))
        .chain(file.bucket.iter().map(|(b, e)| (b.as_str(), e)))
    {
        if !std::ptr::eq(e, &file) && !e.bucket.is_empty() {
            return Err(Error::invalid(format!(
                "{name}: [bucket.{bucket}] cannot hold bucket tables"
            )));
        }
        if e.secret_access_key.is_some() && e.secret_access_key_file.is_some() {
            return Err(Error::invalid(format!(
                "{name}: {bucket}: give secret_access_key or secret_access_key_file, not both"
            )));
        }
        if let Some(url) = &e.endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Error::invalid(format!(
                "{name}: {bucket}: endpoint {url:?} is not an http:// or https:// URL"
            )));
        }
    }
    Ok(file)
}

/// Refuses a settings file with a secret in it that group or others can read.
fn check_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !text.contains("secret_access_key") && !text.contains("session_token") {
        return Ok(());
    }
    let mode = std::fs::metadata(path)
        .map_err(|e| Error::io_path("read S3 settings", path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::invalid(format!(
            "{} holds a secret and is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_tables_override_the_top_level() {
        let f = parse(
            "region = \"garage\"\nendpoint = \"http://a:1\"\naccess_key_id = \"top\"\n\
             [bucket.off]\nendpoint = \"https://b\"\nsecret_access_key = \"s\"\n",
            "s3.toml",
        )
        .unwrap();
        let off = merge(f.bucket["off"].clone(), f.clone());
        assert_eq!(off.endpoint.as_deref(), Some("https://b"));
        assert_eq!(off.region.as_deref(), Some("garage"));
        assert_eq!(off.access_key_id.as_deref(), Some("top"));
        assert_eq!(off.secret_access_key.as_deref(), Some("s"));
        assert!(!f.bucket.contains_key("other"));
    }

    #[test]
    fn a_secret_and_its_file_are_one_setting() {
        let first = Endpoint {
            secret_access_key_file: Some("/k".into()),
            ..Endpoint::default()
        };
        let second = Endpoint {
            secret_access_key: Some("env".into()),
            ..Endpoint::default()
        };
        let m = merge(first, second);
        assert_eq!(m.secret_access_key, None);
        assert_eq!(m.secret_access_key_file, Some(PathBuf::from("/k")));
    }

    #[test]
    fn bad_files_name_the_line() {
        for (text, want) in [
            ("endpoint = \"x\"\nregin = \"a\"\n", "s3.toml:2:"),
            ("[bucket.a]\nendpoint = \"ftp://x\"\n", "not an http"),
            (
                "secret_access_key = \"a\"\nsecret_access_key_file = \"/b\"\n",
                "not both",
            ),
            ("endpoint = 3\n", "s3.toml:1:"),
            ("[bucket.a.bucket.b]\nregion = \"x\"\n", "cannot hold"),
        ] {
            let e = parse(text, "s3.toml").unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
