//! placeholder
pub mod bus;
pub mod node;
pub mod topology;
