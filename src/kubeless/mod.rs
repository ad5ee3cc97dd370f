//! Migrating from Kubeless: reading `kubeless.io/v1beta1` Function objects (and their
//! CronJobTrigger, HTTPTrigger, KafkaTrigger and NATSTrigger objects) and turning each function
//! into fnbuild's build inputs, a Knative Service and the Knative Eventing objects that take the
//! triggers' place: a PingSource for a schedule, a KafkaSource for a Kafka topic, a Trigger on
//! the namespace's Broker for a NATS topic. What Knative has no place for is listed with the
//! function, never dropped silently; what the cluster needs for the event sources is said once.

mod convert;
mod eventing;
mod function;
mod pubsub;

pub use convert::{convert, Conversion, ConvertRequest, Converted};
pub use eventing::{bootstrap_servers, DEFAULT_KAFKA_BOOTSTRAP_SERVERS};
pub use function::{read_objects, Content, Function};
pub use pubsub::{PubSubKind, PubSubTrigger};
