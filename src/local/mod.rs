//! One machine: the SQLite store (queue, ledger, the worker's checkpoints) and the nodes
//! listed in the config: directories here, reached as local processes, or over SSH.

pub mod fleet;
mod ssh;
pub mod store;
