//! Named restore points: `pg_create_restore_point` on the server, through `psql`.

use crate::error::{Error, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// The longest restore point name PostgreSQL keeps (`MAXFNAMELEN` less its terminator).
const NAME_MAX: usize = 63;

/// Checks that `name` can name a restore point: 1 to 63 bytes, no control characters.
pub fn check_restore_point_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{name:?}: a restore point's name is 1 to {NAME_MAX} bytes, without control \
             characters"
        )));
    }
    Ok(())
}

/// Creates restore point `name` on the server `db` reaches (psql's environment when `None`);
/// returns its LSN as PostgreSQL prints it (`0/3000090`).
pub fn create_restore_point(db: Option<&str>, name: &str) -> Result<String> {
    check_restore_point_name(name)?;
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("name={name}"));
    if let Some(db) = db {
        cmd.arg("-d").arg(db);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("run psql (install PostgreSQL's client)", e))?;
    // The name goes in as a psql variable, quoted by psql (`:'name'`), never spliced into SQL.
    let sent = child
        .stdin
        .take()
        .expect("piped")
        .write_all(b"SELECT pg_create_restore_point(:'name');\n");
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("run psql", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::invalid(format!(
            "psql could not create restore point {name:?}: {}",
            stderr.trim()
        )));
    }
    sent.map_err(|e| Error::io("write to psql", e))?;
    let lsn = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let is_lsn = lsn.split_once('/').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
    });
    if !is_lsn {
        return Err(Error::invalid(format!(
            "psql answered {lsn:?} for restore point {name:?}, not an LSN"
        )));
    }
    Ok(lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_names_are_checked() {
        assert!(check_restore_point_name("before-migration-42").is_ok());
        assert!(check_restore_point_name(&"x".repeat(63)).is_ok());
        for bad in ["", "a\nb", &"x".repeat(64)] {
            assert!(check_restore_point_name(bad).is_err(), "{bad:?}");
        }
    }
}
