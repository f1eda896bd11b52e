//! What the command line takes from its environment and hands to the library, which reads no
//! `STRATA_*` variable and asks nothing on a terminal: passphrases (a file, a variable or a
//! prompt), the cost of new key files, and the options of repositories on object storage.

use std::path::Path;
use std::time::Duration;

/// The passphrase of an encrypted repository: the password file when one is named
/// (`--password-file` or `STRATA_PASSWORD_FILE`; its line ending trimmed), else
/// `STRATA_PASSWORD`, else a prompt on the terminal.
pub fn passphrase(file: Option<&Path>, prompt: &str) -> strata::Result<String> {
    if let Some(file) = file {
        return strata::crypto::read_passphrase_file(file);
    }
    if let Ok(p) = std::env::var("STRATA_PASSWORD") {
        return Ok(p);
    }
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .map_err(|e| strata::Error::io("read the passphrase", e));
    }
    Err(strata::Error::invalid(strata::crypto::NO_PASSPHRASE))
}

/// Whether a passphrase is given without asking (a file or the variable).
pub fn passphrase_given(file: Option<&Path>) -> bool {
    file.is_some() || std::env::var_os("STRATA_PASSWORD").is_some()
}

/// The argon2 memory of new key files: `STRATA_KDF_MEMORY_KIB` (a cheaper key for tests, a
/// costlier one for the careful), else the default.
pub fn kdf_memory_kib() -> u32 {
    std::env::var("STRATA_KDF_MEMORY_KIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(strata::crypto::KDF_MEMORY_KIB)
}

/// The options of repositories on object storage: `STRATA_S3_CONFIG` names the settings file,
/// `STRATA_S3_LEASE_SECS` the lease length, and `STRATA_S3_STATS` asks for the request counts.
pub fn s3_options() -> strata::s3::S3Options {
    let mut options = strata::s3::S3Options::default();
    if let Some(secs) = std::env::var("STRATA_S3_LEASE_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.lease = Duration::from_secs(secs);
    }
    options.settings_file = std::env::var_os("STRATA_S3_CONFIG")
        .filter(|v| !v.is_empty())
        .map(Into::into);
    options.report_requests = std::env::var_os("STRATA_S3_STATS").is_some();
    options
}
