//! The library's error type. Callers match on [`ErrorKind`]; messages name the object and place.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// What went wrong, coarsely, so callers (and the CLI's exit codes) can decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A path, snapshot or object that was asked for does not exist.
    NotFound,
    /// Bytes read from the repository are damaged or malformed.
    Corrupt,
    /// Another process holds the repository lock.
    Locked,
    /// The repository was written by a newer (or unknown) format version.
    VersionUnsupported,
    /// The user asked for something invalid (bad argument, unsafe restore path...).
    InvalidInput,
    /// An operating-system I/O error (permission denied, disk full...).
    Io,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    VersionUnsupported(String),
    #[error("{0}")]
    InvalidInput(String),
    /// The message includes the cause, so the cause is not also exposed as `source()` (error
    /// chains would print it twice).
    #[error("{context}: {cause}")]
    Io { context: String, cause: io::Error },
    #[error("index database: {0}")]
    Index(String),
    /// A read-only open of an index that a killed writer left without a clean close: it must be
    /// opened for writing once, which recovers it.
    #[error("index database: index needs crash recovery")]
    IndexNeedsRecovery,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Locked(_) => ErrorKind::Locked,
            Error::VersionUnsupported(_) => ErrorKind::VersionUnsupported,
            Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::Io { cause, .. } if cause.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            Error::Io { .. } => ErrorKind::Io,
            Error::Index(_) | Error::IndexNeedsRecovery => ErrorKind::Corrupt,
        }
    }

    /// True when the index must be opened for writing once to recover from a crash.
    pub fn needs_recovery(&self) -> bool {
        matches!(self, Error::IndexNeedsRecovery)
    }

    pub fn corrupt(msg: impl fmt::Display) -> Self {
        Error::Corrupt(msg.to_string())
    }

    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidInput(msg.to_string())
    }

    pub fn not_found(msg: impl fmt::Display) -> Self {
        Error::NotFound(msg.to_string())
    }

    pub fn io(context: impl fmt::Display, source: io::Error) -> Self {
        Error::Io {
            context: context.to_string(),
            cause: source,
        }
    }

    pub fn io_path(action: &str, path: &std::path::Path, source: io::Error) -> Self {
        Error::io(format!("{action} {}", path.display()), source)
    }

    /// The same error again, kind and message, for a second caller asking why something
    /// stopped (`io::Error` cannot be cloned; its OS error code can).
    pub fn again(&self) -> Self {
        match self {
            Error::NotFound(m) => Error::NotFound(m.clone()),
            Error::Corrupt(m) => Error::Corrupt(m.clone()),
            Error::Locked(m) => Error::Locked(m.clone()),
            Error::VersionUnsupported(m) => Error::VersionUnsupported(m.clone()),
            Error::InvalidInput(m) => Error::InvalidInput(m.clone()),
            Error::Index(m) => Error::Index(m.clone()),
            Error::IndexNeedsRecovery => Error::IndexNeedsRecovery,
            Error::Io { context, cause } => Error::Io {
                context: context.clone(),
                cause: match cause.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(cause.kind(), cause.to_string()),
                },
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds the action and path to an `io::Result`.
pub trait IoContext<T> {
    fn ctx(self, action: &str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io_path(action, &path.into(), e))
    }
}

macro_rules! index_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Index(e.to_string())
            }
        }
    )*};
}
index_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_given_again_keeps_its_kind_and_words() {
        let full = Error::io_path(
            "write",
            std::path::Path::new("/repo/packs/x"),
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let again = full.again();
        assert_eq!(again.kind(), ErrorKind::Io);
        assert_eq!(again.to_string(), full.to_string());
        assert!(
            again.to_string().contains("No space left on device"),
            "{again}"
        );
        let gone = Error::io(
            "read",
            io::Error::new(io::ErrorKind::NotFound, "no such pack"),
        );
        assert_eq!(gone.again().kind(), ErrorKind::NotFound);
        assert_eq!(Error::corrupt("bad").again().kind(), ErrorKind::Corrupt);
    }
}
