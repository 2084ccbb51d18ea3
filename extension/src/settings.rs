//! The `m3ret.*` settings. Registered in `_PG_init`, which touches no libtorch API.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::CString;

/// Where `m3ret_embed` runs models.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Inference {
    /// The model server when the library was preloaded, else this backend.
    #[name = c"auto"]
    Auto,
    /// The model server (an ERROR when it does not answer).
    #[name = c"server"]
    Server,
    /// This backend: libtorch and the models loaded in the session's own process.
    #[name = c"backend"]
    Backend,
}

/// The precision of forward passes on the CPU (`m3ret_core::precision`).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum CpuPrecision {
    /// bf16 where the CPU has AMX-BF16 or AVX512-BF16, else f32.
    #[name = c"auto"]
    Auto,
    #[name = c"bf16"]
    Bf16,
    #[name = c"f32"]
    F32,
}

impl CpuPrecision {
    pub fn choice(self) -> m3ret_core::precision::PrecisionChoice {
        use m3ret_core::precision::PrecisionChoice;
        match self {
            CpuPrecision::Auto => PrecisionChoice::Auto,
            CpuPrecision::Bf16 => PrecisionChoice::Bf16,
            CpuPrecision::F32 => PrecisionChoice::F32,
        }
    }
}

pub static CPU_PRECISION: GucSetting<CpuPrecision> =
    GucSetting::<CpuPrecision>::new(CpuPrecision::Auto);
pub static DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static MAX_CACHED_MODELS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(40);
pub static ITERATIVE_SCAN: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_SCAN_TUPLES: GucSetting<i32> = GucSetting::<i32>::new(20_000);
pub static INFERENCE: GucSetting<Inference> = GucSetting::<Inference>::new(Inference::Auto);
pub static BATCH_WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static SERVER_THREADS: GucSetting<i32> = GucSetting::<i32>::new(0);
pub static SERVER_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(300_000);
pub static SERVER_CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

pub fn register() {
    register_server();
    GucRegistry::define_string_guc(
        c"m3ret.device",
        c"Device m3ret runs models on: auto, cpu, cuda or cuda:N.",
        c"auto uses the first CUDA device when there is one, else the CPU; cuda without a CUDA device is an error.",
        &DEVICE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"m3ret.cpu_precision",
        c"Precision of forward passes on the CPU: auto, bf16 or f32.",
        c"auto: bf16 where the CPU has AMX-BF16 or AVX512-BF16 (matrix products in bf16, the rest in f32, weights unchanged), else f32; bf16 on a CPU without either is an error. The model server reads it when it starts.",
        &CPU_PRECISION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.threads",
        c"libtorch intra-op threads per backend.",
        c"Each backend that embeds uses this many CPU threads for tensor operations, at most as many as the machine has cores.",
        &THREADS,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.max_cached_models",
        c"Models kept loaded per backend.",
        c"When a backend needs one more, the least recently used is unloaded.",
        &MAX_CACHED_MODELS,
        1,
        16,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.batch_size",
        c"Studies per forward pass in m3ret_embed_batch.",
        c"Larger batches use the device better and take more memory.",
        &BATCH_SIZE,
        1,
        1024,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"m3ret.model_dir",
        c"Directory m3ret_model_import_file may read model files from.",
        c"Unset (the default), m3ret_model_import_file reads nothing. Only superusers can set it.",
        &MODEL_DIR,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.ef_search",
        c"Candidates an m3ret_hnsw scan keeps per batch.",
        c"Higher finds the true nearest neighbours more often and is slower.",
        &EF_SEARCH,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"m3ret.iterative_scan",
        c"Lets an m3ret_hnsw scan go on past its first batch.",
        c"On (the default), a query whose WHERE clause rejects rows still gets LIMIT rows, up to m3ret.max_scan_tuples visited elements.",
        &ITERATIVE_SCAN,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.max_scan_tuples",
        c"Most index elements one m3ret_hnsw scan visits.",
        c"Bounds the work of an iterative scan whose WHERE clause rejects most rows.",
        &MAX_SCAN_TUPLES,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The model server's settings. Those the supervising worker hands the server when
/// it starts it are set in postgresql.conf (a restart applies them); PostgreSQL
/// allows such settings only while the library is being preloaded, so without
/// preloading (and without a server) they do not exist.
fn register_server() {
    // SAFETY: a plain read of a flag the postmaster sets while loading libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        register_server_start();
    }
    GucRegistry::define_enum_guc(
        c"m3ret.inference",
        c"Where m3ret_embed runs models: auto, server or backend.",
        c"server: the model server the extension starts when it is in shared_preload_libraries (one libtorch and one copy of each model for all sessions, batches across sessions, crashes isolated); backend: this session's own process; auto: server when preloaded, else backend. Only superusers may change it: a session in backend mode leaves the server's crash isolation.",
        &INFERENCE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.server_timeout",
        c"Longest wait for the model server's answer to one request.",
        c"Past it the statement ends with an ERROR. Cancellation and statement_timeout end the wait at once.",
        &SERVER_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"m3ret.server_connect_timeout",
        c"Longest wait for the model server to accept a connection.",
        c"Covers a server that is being restarted after a crash; past it the statement ends with an ERROR saying the server is not running.",
        &SERVER_CONNECT_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

fn register_server_start() {
    GucRegistry::define_int_guc(
        c"m3ret.batch_wait_ms",
        c"How long the model server waits to gather requests into one forward pass.",
        c"The first request of a batch waits at most this long for others (or until m3ret.batch_size studies are in). Read when the server starts.",
        &BATCH_WAIT_MS,
        0,
        60_000,
        GucContext::Postmaster,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"m3ret.server_threads",
        c"libtorch threads of the model server (0: one per CPU core).",
        c"Read when the server starts.",
        &SERVER_THREADS,
        0,
        1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

pub fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().into_owned())
}
