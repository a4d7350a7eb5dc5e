//! Contracts shared by the operator and the services: the Redis key layout, admission and user
//! tokens, the event configuration file the operator mounts, HTTP problem details, telemetry and the Redis connection.
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod keys;
pub mod net;
pub mod problem;
pub mod redis;
pub mod telemetry;
pub mod token;
