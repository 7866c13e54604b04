//! The controller: NamespaceMappings replicated continuously, on a schedule or on demand.

pub mod schedule;
