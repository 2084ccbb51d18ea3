//! m3ret: the PostgreSQL extension.
//!
//! - `embedding/`: the `embedding(dim)` type, its operators and casts
//!   (on-disk and binary layout identical to pgvector's `vector`).
//!
//! Everything about images, models and distances lives in `m3ret-core`; this crate
//! only translates between PostgreSQL and it. No libtorch call happens at load time
//! (`_PG_init`): CUDA cannot be initialised before the postmaster forks a backend.

pgrx::pg_module_magic!(name, version);

mod embedding;
mod error;

// The type, its I/O functions, operators and casts, written as SQL by hand so that
// the names and properties users rely on are in one readable place.
pgrx::extension_sql_file!("../sql/embedding.sql", name = "embedding_type", bootstrap);
