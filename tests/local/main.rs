//! The one-machine runtime, for real: `shipit serve` over HTTP, the CLI, the worker with
//! real virtualenvs, wheels and service processes, and the gate and notifiers against
//! local HTTP servers standing in for GitHub, Slack, New Relic and Datadog.

#[path = "../helpers/mod.rs"]
mod helpers;

mod checks;
mod e2e;
mod example;
mod fuzz_replay;
mod gate;
mod index;
mod notify;
mod page;
mod safety;
mod serve;
mod ssh;
