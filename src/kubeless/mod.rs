//! Migrating from Kubeless: reading `kubeless.io/v1beta1` Function objects (and their
//! CronJobTrigger and HTTPTrigger objects) and turning each function into fnbuild's build
//! inputs, a Knative Service and, for a schedule, a Knative PingSource. What Knative has no
//! place for is listed with the function, never dropped silently.

mod convert;
mod function;

pub use convert::{convert, ConvertRequest, Converted};
pub use function::{read_objects, Content, Function};
