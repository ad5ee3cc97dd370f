//! fnbuild: builds images that serve the Kubeless function interface and pushes them to an OCI
//! registry without a Docker daemon.
//!
//! The path of a build (see `build`): a `source` is fetched into a workspace, the `runtime`
//! catalog names the base image, `deps` are installed inside the base image's own root
//! filesystem, `image` makes the deps and code layers and the new config and manifest, and an
//! output (a `registry`, an OCI layout or a tarball, see `transport`) receives the result.

pub mod base;
pub mod beneath;
pub mod blocking;
pub mod build;
pub mod builder_image;
pub mod cache;
pub mod cache_repo;
pub mod cli;
pub mod compile_check;
pub mod confine;
pub mod deps;
pub mod digest;
pub mod emulation;
pub mod error;
pub mod function_image;
pub mod handler_check;
pub mod image;
pub mod knative;
pub mod kubeless;
pub mod mirror;
pub mod net;
pub mod progress;
pub mod quantity;
pub mod registry;
pub mod rootfs;
pub mod run;
pub mod runtime;
pub mod sandbox;
pub mod sbom;
pub mod source;
pub mod transport;

pub use error::{Error, Result};
