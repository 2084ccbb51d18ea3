//! m3ret's benchmarks. The criterion benches are the `[[bench]]` targets of this
//! package (`cargo bench -p m3ret-benches`); the SQL benchmark harness lives beside
//! them as it is added.
