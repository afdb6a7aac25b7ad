//! placeholder
pub mod bus;
pub mod topology;
