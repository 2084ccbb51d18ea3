//! Training batches, decoded by worker threads into a bounded queue.
//!
//! Items are grouped by (modality, layout) because a batch is one tensor: the same
//! modality within a step, groups changing between steps (as the paper trains),
//! drawn in proportion to their size or in turns ([`Schedule`]).
//! Which items make step s is a pure function of (seed, s), so a resumed run sees
//! the same batches it would have seen.

use crate::decode_cache::DecodeCache;
use crate::manifest::{self, Item};
use m3ret_core::modality::{Modality, ModalityChoice};
use m3ret_core::model::config::InputSpec;
use m3ret_core::preprocess::FrameSampling;
use m3ret_core::study::{self, StudyOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tch::Tensor;

/// The layout a manifest `kind` gives: the tensor's slice count depends on it.
fn layout_of(item: &Item) -> &'static str {
    match item.kind.as_str() {
        "video" => "video",
        "volume" | "dicom-series" => "volume",
        _ => "2d",
    }
}

/// Items of one (modality, layout), and its batch size.
#[derive(Clone)]
pub struct Group {
    pub modality: Modality,
    pub layout: &'static str,
    pub items: Vec<Item>,
    pub batch: usize,
}

impl Group {
    pub fn name(&self) -> String {
        format!("{}/{}", self.modality, self.layout)
    }
}

/// Batch sizes per layout (the paper: 16 for CT volumes, 32 otherwise).
#[derive(Clone, Copy, Debug)]
pub struct BatchSizes {
    pub image2d: usize,
    pub video: usize,
    pub volume: usize,
}

pub fn groups(items: &[Item], sizes: BatchSizes) -> Vec<Group> {
    let mut map: BTreeMap<(String, &'static str), Group> = BTreeMap::new();
    for item in items {
        let layout = layout_of(item);
        let batch = match layout {
            "video" => sizes.video,
            "volume" => sizes.volume,
            _ => sizes.image2d,
        };
        map.entry((item.modality.name().to_string(), layout))
            .or_insert_with(|| Group {
                modality: item.modality,
                layout,
                items: Vec::new(),
                batch,
            })
            .items
            .push(item.clone());
    }
    map.into_values().collect()
}

/// Which group each step trains: a pure function of (seed, step), so that a
/// resumed run draws what it would have drawn.
#[derive(Clone)]
pub struct Schedule {
    /// Cumulative shares of steps, one per group, the last 1; empty: groups take turns.
    cumulative: Vec<f64>,
    groups: usize,
}

impl Schedule {
    /// `proportional`: a step draws group g with probability proportional to
    /// max(its share of the items, `floor`); else the groups take turns.
    pub fn new(groups: &[Group], proportional: bool, floor: f64) -> Schedule {
        if !proportional {
            return Schedule {
                cumulative: Vec::new(),
                groups: groups.len(),
            };
        }
        let total: usize = groups.iter().map(|g| g.items.len()).sum();
        let weights: Vec<f64> = groups
            .iter()
            .map(|g| (g.items.len() as f64 / total.max(1) as f64).max(floor))
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut cumulative: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / sum;
                acc
            })
            .collect();
        if let Some(last) = cumulative.last_mut() {
            *last = 1.0;
        }
        Schedule {
            cumulative,
            groups: groups.len(),
        }
    }

    /// The share of steps each group gets.
    pub fn shares(&self) -> Vec<f64> {
        if self.cumulative.is_empty() {
            return vec![1.0 / self.groups.max(1) as f64; self.groups];
        }
        self.cumulative
            .iter()
            .scan(0.0, |prev, &c| {
                let share = c - *prev;
                *prev = c;
                Some(share)
            })
            .collect()
    }

    pub fn group(&self, step: i64, seed: u64) -> usize {
        if self.cumulative.is_empty() {
            return step as usize % self.groups;
        }
        let u = (mix(seed ^ mix(0x5ced_u64 ^ step as u64)) >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative
            .iter()
            .position(|&c| u < c)
            .unwrap_or(self.groups - 1)
    }
}

/// A decoded batch for one step.
pub struct Batch {
    pub step: i64,
    pub group: String,
    pub tensor: Tensor,
}

/// splitmix64, for reproducible choices from (seed, step, slot).
pub use m3ret_core::rng::mix;

/// Worker threads that decode steps `start..end` into a bounded queue.
pub struct Loader {
    receiver: mpsc::Receiver<Result<Batch, String>>,
    pending: BTreeMap<i64, Batch>,
    next: i64,
    pub skipped: Arc<AtomicUsize>,
}

pub struct LoaderOptions {
    pub seed: u64,
    pub workers: usize,
    pub queue: usize,
    pub strict: bool,
    pub input: InputSpec,
    /// Keeps 2D studies after their first decode (None: decode at every draw).
    pub cache: Option<Arc<DecodeCache>>,
}

impl Loader {
    pub fn start(
        groups: Vec<Group>,
        schedule: Schedule,
        start: i64,
        end: i64,
        options: LoaderOptions,
    ) -> Loader {
        let (sender, receiver) = mpsc::sync_channel(options.queue.max(1));
        let groups = Arc::new(groups);
        let schedule = Arc::new(schedule);
        let next_step = Arc::new(AtomicI64::new(start));
        let skipped = Arc::new(AtomicUsize::new(0));
        for _ in 0..options.workers.max(1) {
            let (groups, schedule, next_step, sender, skipped) = (
                groups.clone(),
                schedule.clone(),
                next_step.clone(),
                sender.clone(),
                skipped.clone(),
            );
            let (seed, strict, input) = (options.seed, options.strict, options.input.clone());
            let cache = options.cache.clone();
            std::thread::spawn(move || {
                loop {
                    let step = next_step.fetch_add(1, Ordering::SeqCst);
                    if step >= end {
                        return;
                    }
                    let group = &groups[schedule.group(step, seed)];
                    let batch = decode_step(
                        group,
                        step,
                        seed,
                        strict,
                        &input,
                        cache.as_deref(),
                        &skipped,
                    );
                    if sender.send(batch).is_err() {
                        return; // the trainer stopped
                    }
                }
            });
        }
        Loader {
            receiver,
            pending: BTreeMap::new(),
            next: start,
            skipped,
        }
    }

    /// The batch of the next step, in step order.
    pub fn next(&mut self) -> Result<Batch, String> {
        loop {
            if let Some(b) = self.pending.remove(&self.next) {
                self.next += 1;
                return Ok(b);
            }
            let b = self
                .receiver
                .recv()
                .map_err(|_| "the data loader stopped".to_string())??;
            self.pending.insert(b.step, b);
        }
    }
}

fn decode_step(
    group: &Group,
    step: i64,
    seed: u64,
    strict: bool,
    input: &InputSpec,
    cache: Option<&DecodeCache>,
    skipped: &AtomicUsize,
) -> Result<Batch, String> {
    // Videos and volumes draw random frames or slices: not the same tensor twice.
    let cache = cache.filter(|_| group.layout == "2d");
    let mut options = StudyOptions::for_input(ModalityChoice::Given(group.modality), input);
    let mut tensors = Vec::with_capacity(group.batch);
    let mut attempt = 0u64;
    while tensors.len() < group.batch {
        let slot = tensors.len() as u64;
        let pick =
            mix(seed ^ mix(step as u64) ^ mix(slot.wrapping_mul(1_000_003).wrapping_add(attempt)));
        let item = &group.items[(pick % group.items.len() as u64) as usize];
        options.sampling = FrameSampling::Random(pick);
        let decode = || {
            manifest::read_item(item).and_then(|bufs| {
                let refs: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
                study::load_buffers(&refs, &options)
                    .map(|s| (s.tensor, s.detected.shape[0] == 1))
                    .map_err(|e| format!("{}: {e}", item.path.display()))
            })
        };
        let loaded = match cache {
            Some(c) => c.get_or_decode(&item.path, decode),
            None => decode().map(|(t, _)| t),
        };
        match loaded {
            Ok(t) => tensors.push(t),
            Err(e) if strict => return Err(e),
            Err(e) => {
                if skipped.fetch_add(1, Ordering::SeqCst) < 10 {
                    eprintln!("warning: skipping {e}");
                }
                attempt += 1;
                if attempt > 64 * group.batch as u64 {
                    return Err(format!(
                        "group {}: too many items fail to decode (last: {e})",
                        group.name()
                    ));
                }
            }
        }
    }
    Ok(Batch {
        step,
        group: group.name(),
        tensor: Tensor::stack(&tensors, 0),
    })
}
