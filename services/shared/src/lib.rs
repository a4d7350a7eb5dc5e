//! Contracts shared by the operator and the services: the Redis key layout, admission and user
//! tokens, the event configuration file the operator mounts, HTTP problem details, telemetry and the Redis connection.
//! Also the services' runtime: duration flags (`config::parse_duration`), serving with a drain on
//! shutdown (`http::serve_draining`), background loops that must not end before shutdown
//! (`supervise`) and the request-latency histogram (`http::RequestDurations`).
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod keys;
pub mod net;
pub mod problem;
pub mod redis;
pub mod supervise;
pub mod telemetry;
pub mod token;
