//! A Ferry vault as it sits in target storage (FORMATS.md), read and kept with the vault key
//! alone, by ferryd and by ferryctl (which works with ferryd stopped):
//!
//! - [`retention`]: which recovery points a consolidation keeps (the `[retention]` policy).

pub mod retention;
