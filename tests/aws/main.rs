//! The AWS runtime against the AWS-API emulator (tests/emulator/server.py, started by
//! scripts/test): deploys through SSM and Step Functions, the Parameter Store ledger,
//! ingress onto SQS, and the SAM template read as data. One binary: linking the AWS SDK
//! once, not once per file, is most of a cold build on two cores.

#[path = "../helpers/mod.rs"]
mod helpers;

mod deploy;
mod emulator;
mod infra;
mod ingress;
mod ledger;
mod tls;
