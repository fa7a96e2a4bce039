//! Retention: the rules of the `[retention]` policy ([`plan`]), the records it keeps in
//! storage, pins and pruned points ([`records`]), and consolidating a disk ([`consolidate`]).

pub mod consolidate;
pub mod plan;
pub mod records;
