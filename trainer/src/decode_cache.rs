//! Canonical tensors of 2D studies, kept after their first decode so that a run
//! decodes each study once (on a GPU the decoders, not the model, would set the pace).
//!
//! Only single-frame 2D studies are kept: a video or volume is sampled anew at every
//! draw (random frames or slices), so its canonical tensor is not the same twice. Tensors are kept
//! as decoded (exact: a run gives the same batches with or without the cache) until
//! the byte budget is spent; studies past it are decoded at each draw.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tch::Tensor;

pub struct DecodeCache {
    budget: usize,
    kept: Mutex<Kept>,
    decodes: AtomicUsize,
    reuses: AtomicUsize,
}

#[derive(Default)]
struct Kept {
    tensors: HashMap<PathBuf, Tensor>,
    bytes: usize,
}

/// What a run's cache did, for its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub studies: usize,
    pub bytes: usize,
    pub decodes: usize,
    pub reuses: usize,
}

impl DecodeCache {
    /// A cache that keeps at most `budget_bytes` of tensors.
    pub fn new(budget_bytes: usize) -> DecodeCache {
        DecodeCache {
            budget: budget_bytes,
            kept: Mutex::new(Kept::default()),
            decodes: AtomicUsize::new(0),
            reuses: AtomicUsize::new(0),
        }
    }

    /// The study at `path`: the kept tensor, or `decode()`'s. `decode` also says whether
    /// its tensor is the same at every draw (a single frame: a multi-frame file listed as
    /// 2D is sampled anew); such a tensor is kept if the budget allows. Two workers
    /// drawing the same new study at once may both decode it; one copy is kept.
    pub fn get_or_decode(
        &self,
        path: &Path,
        decode: impl FnOnce() -> Result<(Tensor, bool), String>,
    ) -> Result<Tensor, String> {
        if let Some(t) = self.lock().tensors.get(path) {
            self.reuses.fetch_add(1, Ordering::Relaxed);
            return Ok(t.shallow_clone());
        }
        let (t, same_every_draw) = decode()?;
        self.decodes.fetch_add(1, Ordering::Relaxed);
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let mut kept = self.lock();
        if same_every_draw && !kept.tensors.contains_key(path) && kept.bytes + size <= self.budget {
            kept.bytes += size;
            kept.tensors.insert(path.to_path_buf(), t.shallow_clone());
        }
        Ok(t)
    }

    pub fn stats(&self) -> CacheStats {
        let kept = self.lock();
        CacheStats {
            studies: kept.tensors.len(),
            bytes: kept.bytes,
            decodes: self.decodes.load(Ordering::Relaxed),
            reuses: self.reuses.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A worker that panicked while holding the lock left the map whole (inserts are
        // one call): go on with it.
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn study(value: f64) -> Tensor {
        Tensor::full([3, 4, 8, 8], value, (Kind::Float, Device::Cpu))
    }

    #[test]
    fn a_study_is_decoded_once_and_comes_back_the_same() {
        let cache = DecodeCache::new(1 << 20);
        let a = cache
            .get_or_decode(Path::new("a.png"), || Ok((study(0.25), true)))
            .unwrap();
        let again = cache
            .get_or_decode(Path::new("a.png"), || panic!("decoded twice"))
            .unwrap();
        assert!(a.equal(&again));
        let stats = cache.stats();
        assert_eq!((stats.studies, stats.decodes, stats.reuses), (1, 1, 1));
        assert_eq!(stats.bytes, 3 * 4 * 8 * 8 * 4);
    }

    #[test]
    fn past_the_budget_studies_are_decoded_each_time_and_errors_are_not_kept() {
        let one = 3 * 4 * 8 * 8 * 4;
        let cache = DecodeCache::new(one + one / 2);
        let a = cache.get_or_decode(Path::new("a.png"), || Ok((study(0.0), true)));
        assert_eq!(a.unwrap().size(), [3, 4, 8, 8]);
        for _ in 0..2 {
            let b = cache
                .get_or_decode(Path::new("b.png"), || Ok((study(1.0), true)))
                .unwrap();
            assert_eq!(f64::try_from(b.mean(Kind::Float)).unwrap(), 1.0);
        }
        // A multi-frame file in a 2D group is sampled anew: never kept, whatever the room.
        let roomy = DecodeCache::new(1 << 20);
        for frame in [2.0, 3.0] {
            let c = roomy.get_or_decode(Path::new("cine.dcm"), || Ok((study(frame), false)));
            assert_eq!(f64::try_from(c.unwrap().mean(Kind::Float)).unwrap(), frame);
        }
        assert_eq!(roomy.stats().studies, 0);
        let e = cache
            .get_or_decode(Path::new("bad.png"), || {
                Err("bad.png: unrecognised format".into())
            })
            .unwrap_err();
        assert_eq!(e, "bad.png: unrecognised format");
        let stats = cache.stats();
        assert_eq!((stats.studies, stats.bytes), (1, one));
        assert_eq!((stats.decodes, stats.reuses), (3, 0));
    }
}
