//! Benchmarks live here (issue 8).
