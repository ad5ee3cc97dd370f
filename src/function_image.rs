//! The function-image contract: what every image fnbuild makes for a function promises the
//! runtime server in it and the platforms that run it (the Kubeless layout). Base images,
//! function images, `fnbuild run`, the Kubeless converter and the Knative checks all take
//! these names from here; the runtime servers (`runtimes/*/kubeless.*`) read the same ones.

/// Where a function's code lives in the image; deps go there too
/// (`lib/pythonX.Y/site-packages` from `pip --prefix`, `node_modules` from npm).
pub const CODE_DIR: &str = "/kubeless";
/// Where the runtime server lives in a runtime base image.
pub const SERVER_DIR: &str = "/opt/fnbuild/runtime";
/// The user the runtime server runs as (Knative and Kubernetes prefer non-root).
pub const USER: &str = "1000:1000";
/// The port the runtime servers listen on unless `PORT` (Knative's) or [`env::PORT`] says
/// otherwise.
pub const DEFAULT_PORT: u16 = 8080;

/// The environment variables a function image sets for its runtime server.
pub mod env {
    /// The handler function's name in its module.
    pub const HANDLER: &str = "FUNC_HANDLER";
    /// The handler's module.
    pub const MODULE: &str = "MOD_NAME";
    /// The runtime's name (e.g. `python3.13`), passed to the handler.
    pub const RUNTIME: &str = "FUNC_RUNTIME";
    /// Seconds a call may take before the server answers 408.
    pub const TIMEOUT: &str = "FUNC_TIMEOUT";
    /// Where the server listens when `PORT` is not set.
    pub const PORT: &str = "FUNC_PORT";
    /// The function's memory limit in bytes, when known (`fnbuild build --memory`).
    pub const MEMORY_LIMIT: &str = "FUNC_MEMORY_LIMIT";
}

/// The labels a runtime base image carries.
pub mod labels {
    /// The runtime's name (e.g. `python3.13`).
    pub const RUNTIME: &str = "dev.fnbuild.runtime";
    /// The runtime's language (`python`, `nodejs`).
    pub const LANGUAGE: &str = "dev.fnbuild.runtime.language";
}
