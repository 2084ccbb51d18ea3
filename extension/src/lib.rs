//! m3ret: the PostgreSQL extension.
//!
//! - `embedding/`: the `embedding(dim)` type, its operators and casts
//!   (on-disk and binary layout identical to pgvector's `vector`);
//! - `embed.rs`: `m3ret_embed` and friends; `runtime.rs`: where models run (the
//!   model server or this backend) and the per-backend model cache;
//!   `server_client.rs`: a backend's side of the model server; `server_worker.rs`:
//!   the background worker that starts and supervises it;
//! - `registry.rs` (+ sql/registry.sql): models stored in the database;
//! - `hnsw/` (+ sql/hnsw.sql): the `m3ret_hnsw` index access method;
//! - `study_info.rs`: `m3ret_dicom_meta` and `m3ret_study_info` (what a file is);
//! - `settings.rs`: the `m3ret.*` settings.
//!
//! Everything about images, models and distances lives in `m3ret-core`; this crate
//! only translates between PostgreSQL and it. No libtorch call happens at load time
//! (`_PG_init`): CUDA cannot be initialised before the postmaster forks a backend.

pgrx::pg_module_magic!(name, version);

mod bytea_array;
mod embed;
mod embedding;
mod error;
mod hnsw;
mod pg_compat;
mod process_exit;
mod registry;
mod runtime;
mod server_client;
mod server_worker;
mod settings;
mod study_info;

/// Registers the settings, the exit handler that skips libtorch's destructors and,
/// when preloaded, the model server's supervising worker. No libtorch call may
/// happen here (the postmaster may load the library before forking backends).
#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    hnsw::options::register();
    process_exit::skip_library_destructors();
    server_worker::register();
}

// The type, its I/O functions, operators and casts, written as SQL by hand so that
// the names and properties users rely on are in one readable place.
pgrx::extension_sql_file!("../sql/embedding.sql", name = "embedding_type", bootstrap);
// The index access method, its operator classes and its check function.
pgrx::extension_sql_file!(
    "../sql/hnsw.sql",
    name = "hnsw",
    requires = ["embedding_type"]
);
// The registry's table, view and admin functions, after the Rust functions they use.
pgrx::extension_sql_file!("../sql/registry.sql", name = "registry", finalize);
