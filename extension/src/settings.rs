//! The `m3ret.*` settings. Registered in `_PG_init`, which touches no libtorch API.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

pub static DEVICE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"auto"));
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(1);
pub static MAX_CACHED_MODELS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static MODEL_DIR: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(40);
pub static ITERATIVE_SCAN: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static MAX_SCAN_TUPLES: GucSetting<i32> = GucSetting::<i32>::new(20_000);

pub fn register() {
    GucRegistry::define_string_guc(
        c"m3ret.device",
        c"Device m3ret runs models on: auto, cpu, cuda or cuda:N.",
        c"auto uses the first CUDA device when there is one, else the CPU; cuda without a CUDA device is an error.",
        &DEVICE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"m3ret.threads",
        c"libtorch intra-op threads per backend.",
        c"Each backend that embeds uses this many CPU threads for tensor operations.",
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

pub fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().map(|s| s.to_string_lossy().into_owned())
}
