//! The core: what a deploy job is, the engine that runs one as a pure state machine,
//! and the ports it talks through. Nothing here does I/O, reads a clock, or knows the
//! config file format, an adapter, tokio or AWS.

pub mod analysis;
pub mod approval;
pub mod calendar;
pub mod checks;
pub mod command;
pub mod dora;
pub mod engine;
pub mod history;
outside_input! {
    pub mod job;
}
pub mod lists;
pub mod lock;
pub mod overview;
pub mod ports;
pub mod promotion;
pub mod report;
pub mod rollout;
pub mod status;
pub mod story;
outside_input! {
    pub mod version;
}
