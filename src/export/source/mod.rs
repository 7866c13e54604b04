//! Where objects come from: files (`--from DIR`) or a live cluster.

pub mod live;
pub mod offline;
