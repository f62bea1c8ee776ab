// A build script is required for cargo to consider build dependencies (see src/lib.rs).
fn main() {}
