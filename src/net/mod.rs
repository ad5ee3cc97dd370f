//! What fnbuild's network clients (the registry client, the HTTP and Git sources) share: the
//! one retry policy and what counts as transient ([`retry`]), and URLs as they may be shown
//! ([`redact`]).

pub mod redact;
pub mod retry;

pub use redact::RedactedUrl;
pub use retry::{RetryPolicy, Transience};
