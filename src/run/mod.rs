//! Entry points: the Lambda handlers, the HTTP server and package watcher of
//! `shipit serve`, and what builds each runtime's ports: `aws` from a Lambda's environment,
//! `local` from the config file.

pub mod aws;
pub mod fresh;
#[cfg(feature = "local")]
pub mod local;
#[cfg(feature = "local")]
pub mod overview;
#[cfg(feature = "page")]
pub mod page;
outside_input! {
    #[cfg(feature = "page")]
    pub mod aws_page;
    pub mod lambda;
    #[cfg(feature = "local")]
    pub mod packages;
    #[cfg(feature = "local")]
    pub mod server;
}
pub mod telemetry;
