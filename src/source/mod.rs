//! Where a backup's bytes come from, and how they are read consistently: the walk of the source
//! paths ([`walk`]), stable capture of files and stores that change while they are read
//! ([`capture`]), and consistent images of live SQLite databases ([`sqlite`]).

pub mod capture;
pub mod sqlite;
pub mod walk;
