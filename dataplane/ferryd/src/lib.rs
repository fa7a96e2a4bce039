//! ferryd, the process server: the durable cache of received batches ([`cache`]) and small
//! checksummed state files ([`state_file`]).

pub mod cache;
pub mod state_file;
