//! Hybrid recommendation serving. This first part is the logic every RPC uses, free of I/O so
//! it is unit-tested exactly: score fusion and min-max normalisation ([`rank`]), popularity
//! sampling, session vectors and the short-term update ([`vectors`]), the per-user queues with
//! caps and TTLs ([`session`]) and real-time fold-in of new users ([`foldin`]).

pub mod foldin;
pub mod rank;
pub mod session;
pub mod vectors;
