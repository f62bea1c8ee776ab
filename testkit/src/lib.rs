//! Stand-in servers for the test suites, for stores no real server of which can run on the
//! development machines (no Docker, no downloads):
//! - [`qdrant`]: Qdrant's own gRPC protocol (the `Collections` and `Points` services generated
//!   in `qdrant-client`), over an exact in-memory index, for the RPCs recsys uses.
//!
//! Stand-ins are named as such everywhere they are used; each says what it proves and what it
//! cannot (docs/testing.md).

pub mod qdrant;
