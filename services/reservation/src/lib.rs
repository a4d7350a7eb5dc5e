//! tiketi's reservation service: seat holds in Redis, bookings in PostgreSQL, never a double
//! booking. `domain` holds the pure seat rules; `redis_store` and `db` the two stores; `service`
//! the operations; `api` the HTTP surface; `server` the wiring and graceful drain.
#![forbid(unsafe_code)]

pub mod api;
pub mod db;
pub mod domain;
pub mod metrics;
pub mod model;
pub mod redis_store;
pub mod server;
pub mod service;
pub mod settings;

pub use settings::Settings;
