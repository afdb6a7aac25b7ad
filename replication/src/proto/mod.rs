//! Protocol state machines (sans-IO).

pub mod anti_entropy;
pub mod link;
pub mod topology;
