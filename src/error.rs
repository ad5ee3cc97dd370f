//! The library's error type. Each variant names what failed in words a user can act on; the
//! CLI maps `Usage` to exit code 2 and everything else to exit code 1.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument has a value fnbuild does not accept.
    #[error("{0}")]
    Usage(String),

    /// The function's source could not be fetched, verified or unpacked.
    #[error("source: {0}")]
    Source(String),

    /// The handler, runtime or function layout is wrong.
    #[error("{0}")]
    Function(String),

    /// Installing the function's dependencies failed.
    #[error("{0}")]
    Deps(String),

    /// A registry refused a request or could not be reached.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),

    /// An image (manifest, config, layout, tarball) is not what fnbuild can work with.
    #[error("image: {0}")]
    Image(String),

    /// Running a function image locally failed.
    #[error("run: {0}")]
    Run(String),

    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the error is a bad command line rather than a failed build.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage(_))
    }
}

/// Attaches the action and path to an `io::Error`, so that messages say what was being done.
pub trait IoContext<T> {
    fn io_context(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            action,
            path: path.into(),
            source,
        })
    }
}

/// The messages of an error and of its causes, outermost first, without repeats.
pub fn messages(error: &dyn std::error::Error) -> Vec<String> {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        parts.push(cause.to_string());
        source = cause.source();
    }
    parts.dedup();
    parts
}
