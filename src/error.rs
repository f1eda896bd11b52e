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
            Error::Index(_) => ErrorKind::Corrupt,
        }
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
