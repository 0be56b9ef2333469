//! shipit: tag pushes, package uploads and chat commands become deploy jobs; a
//! step-driven deploy installs in parallel and restarts one node at a time.

pub mod aws;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod gate;
pub mod ingress;
pub mod job;
pub mod joined;
pub mod lambda;
pub mod local;
pub mod notify;
pub mod ports;
pub mod secrets;
pub mod server;
pub mod step;
pub mod store;
pub mod template;
pub mod version;
pub mod wiring;
pub mod worker;
