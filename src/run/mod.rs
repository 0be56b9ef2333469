//! Entry points: the Lambda handlers, the HTTP server and package watcher of
//! `shipit serve`, and the wiring that builds each runtime's ports.

pub mod lambda;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "local")]
pub mod packages;
#[cfg(feature = "local")]
pub mod server;
pub mod telemetry;
pub mod wiring;
