//! Retention: the rules of the `[retention]` policy ([`plan`]).

pub mod plan;
