//! The API token of a daemon without a `[[token]]`: kept in a file that only the daemon's user
//! can read (`token_file`, by default `$XDG_STATE_HOME/strata/api-token`), made at the first
//! start and reused after. Local clients read it; the page gets it through the link the daemon
//! prints at start.

use anyhow::{Context, Result, anyhow, bail};
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Where the token file is when `token_file` does not say.
pub fn default_path() -> Result<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let state = std::env::var_os("XDG_STATE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".local/state"))
        })
        .ok_or_else(|| {
            anyhow!(
                "no [[token]] is configured, and neither XDG_STATE_HOME nor HOME says where to \
                 keep the API token: set token_file (STRATA_TOKEN_FILE)"
            )
        })?;
    Ok(state.join("strata/api-token"))
}

/// The token in `path`, made first if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<String> {
    if let Some(token) = read(path)? {
        return Ok(token);
    }
    create(path)
}

/// The token in an existing file; `None` if there is no file.
fn read(path: &Path) -> Result<Option<String>> {
    let shown = path.display();
    let again = "remove it to have a new one made";
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!("API token file {shown} is a symbolic link, not a regular file; {again}")
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("API token file {shown}")),
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("opening API token file {shown}"))?;
    // What was opened is judged, not the name, which could have changed meanwhile.
    let meta = f
        .metadata()
        .with_context(|| format!("API token file {shown}"))?;
    if !meta.is_file() {
        bail!("API token file {shown} is not a regular file; {again}");
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        bail!(
            "API token file {shown} is owned by uid {}, not by this daemon's user (uid {uid}); \
             refusing a token others could have chosen; {again}",
            meta.uid()
        );
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "API token file {shown} has mode {mode:04o}, so others may read or change it; \
             `chmod 600 {shown}`, or {again}"
        );
    }
    let mut text = String::new();
    f.take(4096)
        .read_to_string(&mut text)
        .with_context(|| format!("reading API token file {shown}"))?;
    let token = text.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "API token file {shown} does not hold a token (16 or more printable characters); \
             {again}"
        );
    }
    Ok(Some(token.to_string()))
}

/// Writes a new random token to `path` (mode 0600; its directory made 0700 if missing): to a
/// file beside it first, renamed into place when complete.
fn create(path: &Path) -> Result<String> {
    let shown = path.display();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => bail!("API token file {shown}: give an absolute path"),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut raw = [0u8; 32];
    strata::repo::secure_random(&mut raw)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing API token file {shown}"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_private_then_reused_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/strata/api-token");
        let token = load_or_create(&path).unwrap();
        assert_eq!(token.len(), 64);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(load_or_create(&path).unwrap(), token);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(e.contains("mode 0640"), "{e}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = format!("{:#}", load_or_create(&link).unwrap_err());
        assert!(e.contains("symbolic link"), "{e}");

        fs::write(&path, "short\n").unwrap();
        let e = format!("{:#}", load_or_create(&path).unwrap_err());
        assert!(e.contains("does not hold a token"), "{e}");
    }
}
