//! The store's one error type.

use std::path::PathBuf;

/// Everything that can go wrong talking to the delivery store. URLs in
/// messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no backend herald supports.
    #[error("unsupported store url {url}: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl {
        /// The URL, password removed.
        url: String,
    },
    /// The URL is malformed for its backend.
    #[error("invalid store url {url}: {source}")]
    InvalidUrl {
        /// The URL, password removed.
        url: String,
        /// What the driver said.
        source: sqlx::Error,
    },
    /// The SQLite file's directory could not be created.
    #[error("cannot create the store directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be reached or opened.
    #[error("cannot open the store at {url}: {source}")]
    Connect {
        /// The URL, password removed.
        url: String,
        /// What the driver said.
        source: sqlx::Error,
    },
    /// The schema migrations failed.
    #[error("store migrations failed at {url}: {source}")]
    Migrate {
        /// The URL, password removed.
        url: String,
        /// What the migrator said.
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed; the transaction it belonged to was rolled back.
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// A statement on the SQLite writer's handle failed; its transaction
    /// was rolled back.
    #[error("store query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value herald does not know (a newer schema, or a hand edit).
    #[error("unexpected value {value:?} in {column}")]
    Unexpected {
        /// The table and column.
        column: &'static str,
        /// The value found.
        value: String,
    },
}

impl StoreError {
    /// A short fixed label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            StoreError::UnsupportedUrl { .. } | StoreError::InvalidUrl { .. } => "config",
            StoreError::CreateDir { .. } => "io",
            StoreError::Connect { .. } => "connect",
            StoreError::Migrate { .. } => "migrate",
            StoreError::Query(_) | StoreError::Sqlite(_) => "query",
            StoreError::Unexpected { .. } => "data",
        }
    }
}
