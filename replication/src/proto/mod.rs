//! Protocol state machines (sans-IO).

pub mod anti_entropy;
pub mod link;
pub mod node_links;
pub mod topology;
