//! Talking to OCI registries over the distribution API, with no Docker daemon: references,
//! credentials (`auth`), how a registry authenticates (`challenge`, `token`), sending with
//! retries (`send`) and a thin client of the API's verbs (`client`) that streams blobs from
//! and to disk.

pub mod auth;
mod challenge;
pub mod client;
mod link;
pub mod reference;
mod send;
mod token;

pub use client::{Registries, RegistryClient, TransportOptions};
pub use reference::Reference;

/// What went wrong talking to a registry. Messages name the registry and the repository, and
/// never a credential, token or upload URL.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {detail}{hint}")]
    Unreachable {
        registry: String,
        detail: String,
        hint: &'static str,
    },

    #[error(
        "registry {registry} rejected the credentials for {repository}: {detail}\n\
         hint: {hint}"
    )]
    Unauthorized {
        registry: String,
        repository: String,
        detail: String,
        hint: String,
    },

    #[error(
        "registry {registry} needs credentials for {repository} ({detail}), and none were found\n\
         hint: put them in a Docker config.json: --docker-config DIR, DOCKER_CONFIG, or \
         $HOME/.docker/config.json"
    )]
    CredentialsRequired {
        registry: String,
        repository: String,
        detail: String,
    },

    #[error("registry {registry} denied access to {repository}: {detail}")]
    Denied {
        registry: String,
        repository: String,
        detail: String,
    },

    #[error("{what} not found in registry {registry}: {detail}")]
    NotFound {
        registry: String,
        what: String,
        detail: String,
    },

    #[error("registry {registry} answered {method} {path} with HTTP {status}: {detail}")]
    Refused {
        registry: String,
        method: &'static str,
        path: String,
        status: u16,
        detail: String,
    },

    #[error(
        "{what} from registry {registry} has digest {actual}, expected {expected}: \
         the transfer was corrupted or the registry served the wrong content"
    )]
    DigestMismatch {
        registry: String,
        what: String,
        expected: String,
        actual: String,
    },

    #[error("registry {registry}: {detail}")]
    Protocol { registry: String, detail: String },
}
