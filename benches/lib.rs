//! End-to-end benchmarks (see the benches/ targets).
