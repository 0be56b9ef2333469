//! shipit: tag pushes, package uploads and chat commands become deploy jobs; a
//! step-driven deploy installs in parallel and restarts one node at a time.
//!
//! Floors, from the top: `cli` and `run` (entry points) → `drive` (the one deploy
//! driver, for Step Functions and the local worker) → the adapters (`aws`, `local`,
//! `outbound`) and `ingress` → `config` → `deploy` (the sans-IO core). A module imports
//! only from its own floor or below; `.ci/run` checks it.

//!
//! Features: `local` (default through `cli`) adds the one-machine runtime (SQLite, the
//! HTTP server); `cli` the `shipit` command. The Lambda functions build without either.

/// Declares modules that read what arrives from outside (requests, events, file names,
/// jobs read back, other services' answers): in them an `unwrap`, an index or unchecked
/// arithmetic is a lint error, since a crafted input must get a refusal, not a panic.
macro_rules! outside_input {
    ($($(#[$meta:meta])* $vis:vis mod $name:ident;)*) => {$(
        $(#[$meta])*
        #[cfg_attr(
            not(test),
            deny(
                clippy::unwrap_used,
                clippy::expect_used,
                clippy::indexing_slicing,
                clippy::arithmetic_side_effects,
                clippy::panic
            )
        )]
        $vis mod $name;
    )*};
}

pub mod aws;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod deploy;
pub mod drive;
outside_input! {
    pub mod ingress;
}
#[cfg(feature = "local")]
pub mod local;
pub mod outbound;
pub mod run;
