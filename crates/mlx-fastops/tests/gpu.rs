//! GPU tests (filled in with the kernels).
fn main() {}
