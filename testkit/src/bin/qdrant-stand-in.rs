//! The Qdrant stand-in as a process, for benchmarks and manual runs of the production path where
//! no Qdrant can run (`RECSYS_QDRANT=http://127.0.0.1:6334 recsys …`). It is not a Qdrant: an
//! exact in-memory index behind Qdrant's gRPC protocol, empty at start, gone when stopped.
//!
//! ```sh
//! qdrant-stand-in [ADDR]      # or QDRANT_STAND_IN_LISTEN=ADDR; default 127.0.0.1:6334
//! ```

use std::net::SocketAddr;

use recsys_testkit::qdrant::QdrantStandIn;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("QDRANT_STAND_IN_LISTEN").ok())
        .unwrap_or_else(|| "127.0.0.1:6334".into());
    let addr: SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("listen address {addr}: {e}"),
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let running = runtime.block_on(QdrantStandIn::default().serve(addr))?;
    eprintln!("Qdrant stand-in serving on {} until killed", running.url);
    // The server runs on its own runtime; this thread only keeps the process alive.
    loop {
        std::thread::park();
    }
}
