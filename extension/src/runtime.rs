//! Where models run. In server mode (m3ret.inference), in the model server
//! (`server_client.rs`, `server_worker.rs`). In backend mode, libtorch inside this
//! backend: initialised on first use (never in `_PG_init`: CUDA cannot survive the
//! postmaster's fork), models loaded once per backend and kept in a small
//! least-recently-used cache keyed by the model file's sha256.

use crate::error::raise;
use crate::registry::{self, ModelRef};
use crate::settings::{self, Inference};
use m3ret_core::model::{parse_device, Embedder};
use pgrx::pg_sys::errcodes::PgSqlErrorCode;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::SystemTime;

struct Loaded {
    model: ModelRef,
    embedder: Rc<Embedder>,
    loaded_at: SystemTime,
}

#[derive(Default)]
struct Runtime {
    device_name: Option<String>,
    threads: Option<i32>,
    first_load: Option<SystemTime>,
    /// Most recently used last.
    loaded: Vec<Loaded>,
}

thread_local! {
    // A backend runs one query at a time on one thread: no locking needed.
    static RUNTIME: RefCell<Runtime> = RefCell::new(Runtime::default());
}

/// Whether this call runs models in the model server (else in this backend).
pub fn uses_server() -> bool {
    match settings::INFERENCE.get() {
        Inference::Server => true,
        Inference::Backend => false,
        Inference::Auto => crate::server_worker::registered(),
    }
}

fn device_setting() -> String {
    settings::string(&settings::DEVICE).unwrap_or_else(|| "auto".to_string())
}

/// m3ret.cpu_precision on this CPU; an ERROR for bf16 where the CPU has no bf16 unit.
fn cpu_precision() -> m3ret_core::precision::CpuPrecision {
    m3ret_core::precision::resolve(settings::CPU_PRECISION.get().choice()).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("m3ret.cpu_precision: {e}"),
        )
    })
}

/// The embedder for a model version, loading it into this backend if needed, set
/// to run in m3ret.cpu_precision.
pub fn embedder(model: &ModelRef) -> Rc<Embedder> {
    let embedder = cached_embedder(model);
    embedder.set_cpu_precision(cpu_precision().precision);
    embedder
}

fn cached_embedder(model: &ModelRef) -> Rc<Embedder> {
    apply_threads();
    let device_name = device_setting();
    let device = parse_device(&device_name).unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("m3ret.device: {e}"),
        )
    });
    RUNTIME.with_borrow_mut(|rt| {
        if rt.device_name.as_deref() != Some(device_name.as_str()) {
            // Models on another device are of no use now.
            rt.loaded.clear();
            rt.device_name = Some(device_name.clone());
        }
        if let Some(i) = rt
            .loaded
            .iter()
            .position(|l| l.model.sha256 == model.sha256)
        {
            let hit = rt.loaded.remove(i);
            let embedder = hit.embedder.clone();
            rt.loaded.push(hit);
            return embedder;
        }
        let weights = registry::weights(model);
        let embedder = Embedder::from_bytes(&weights, device).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("model {}: {e}", model.label()),
            )
        });
        let embedder = Rc::new(embedder);
        let cap = settings::MAX_CACHED_MODELS.get().max(1) as usize;
        while rt.loaded.len() >= cap {
            rt.loaded.remove(0);
        }
        let now = SystemTime::now();
        rt.first_load.get_or_insert(now);
        rt.loaded.push(Loaded {
            model: model.clone(),
            embedder: embedder.clone(),
            loaded_at: now,
        });
        embedder
    })
}

/// m3ret.threads, capped at the machine's cores: more threads than cores only
/// contend (64 threads in one backend on 2 cores).
fn threads() -> i32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as i32;
    settings::THREADS.get().min(cores)
}

fn apply_threads() {
    let threads = threads();
    RUNTIME.with_borrow_mut(|rt| {
        if rt.threads != Some(threads) {
            tch::set_num_threads(threads);
            rt.threads = Some(threads);
        }
    });
}

fn iso(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    format!("{secs:.3}")
}

/// What `m3ret_runtime_info()` reports.
pub fn info() -> serde_json::Value {
    let mut info = serde_json::json!({
        "m3ret": env!("CARGO_PKG_VERSION"),
        "inference": if uses_server() { "server" } else { "backend" },
        "inference_setting": format!("{:?}", settings::INFERENCE.get()).to_lowercase(),
        "server_registered": crate::server_worker::registered(),
    });
    let extra = if uses_server() {
        // The server's device and models; this backend runs no libtorch at all
        // (asking libtorch for CUDA devices here would initialise CUDA in it).
        let server =
            crate::server_client::status().unwrap_or_else(|e| serde_json::json!({ "error": e }));
        serde_json::json!({ "server": server })
    } else {
        backend_info()
    };
    if let (Some(info), serde_json::Value::Object(extra)) = (info.as_object_mut(), extra) {
        info.extend(extra);
    }
    info
}

fn backend_info() -> serde_json::Value {
    let device_name = device_setting();
    let devices = m3ret_core::runtime::cuda_device_count();
    let device = match parse_device(&device_name) {
        Ok(d) => format!("{d:?}").to_lowercase(),
        Err(e) => format!("error: {e}"),
    };
    RUNTIME.with_borrow(|rt| {
        serde_json::json!({
            "torch": m3ret_core::runtime::TORCH_VERSION,
            "cuda_available": devices > 0,
            "cuda_devices": devices,
            "cuda_support": m3ret_core::runtime::cuda_support(),
            "device_setting": device_name,
            "device": device,
            "threads": threads(),
            "cpu_precision": m3ret_core::precision::resolve(settings::CPU_PRECISION.get().choice())
                .map(|p| p.describe())
                .unwrap_or_else(|e| format!("error: {e}")),
            "max_cached_models": settings::MAX_CACHED_MODELS.get(),
            "first_load_epoch_s": rt.first_load.map(iso),
            "models_loaded": rt.loaded.iter().map(|l| serde_json::json!({
                "model": l.model.label(),
                "sha256": l.model.sha256,
                "dims": l.embedder.dims(),
                "loaded_at_epoch_s": iso(l.loaded_at),
            })).collect::<Vec<_>>(),
        })
    })
}
