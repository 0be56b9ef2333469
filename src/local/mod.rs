//! One machine: the SQLite store (queue, ledger, the worker's checkpoints) and nodes
//! that are directories here, reached as local processes.

pub mod fleet;
pub mod store;
