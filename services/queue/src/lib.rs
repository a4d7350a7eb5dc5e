//! tiketi's waiting room. Users join an event's queue (idempotently), see an exact position and an
//! ETA, get live updates over server-sent events, and are admitted at a controlled rate with a
//! signed admission token the reservation service verifies.
//!
//! Pure parts (no Redis): [`shuffle`] (the seeded pre-queue order), [`eta`]. Redis parts:
//! [`store`] (atomic Lua scripts), [`admission`] (the leased admission loop), [`hub`] (the
//! per-process stream ticker). HTTP: [`http`]; wiring: [`server`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod bench;
pub mod cli;
pub mod eta;
pub mod events;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod server;
pub mod shuffle;
pub mod store;
