//! Which models the server holds. The embedders themselves live in the batcher
//! thread (the only one that runs them); connection threads see only each model's
//! configuration, which says how to decode studies for it.

use m3ret_core::model::ModelConfig;
use std::sync::Mutex;

#[derive(Clone)]
pub struct LoadedModel {
    /// The model's key (`protocol::model_key`: its database and file's sha256).
    pub key: String,
    pub label: String,
    pub config: ModelConfig,
    pub loaded_at: std::time::SystemTime,
}

#[derive(Default)]
pub struct Models {
    loaded: Mutex<Vec<LoadedModel>>,
    /// Held while a model loads: sessions that ask for it meanwhile wait for it
    /// rather than each send and load their own copy.
    pub loading: Mutex<()>,
}

impl Models {
    /// The configuration of a loaded model; waits for a load in progress first.
    pub fn config_after_loads(&self, key: &str) -> Option<ModelConfig> {
        if let Some(config) = self.config(key) {
            return Some(config);
        }
        let _loads_done = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        self.config(key)
    }

    pub fn config(&self, key: &str) -> Option<ModelConfig> {
        self.lock()
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.config.clone())
    }

    pub fn insert(&self, model: LoadedModel) {
        let mut loaded = self.lock();
        loaded.retain(|m| m.key != model.key);
        loaded.push(model);
    }

    pub fn remove(&self, key: &str) {
        self.lock().retain(|m| m.key != key);
    }

    pub fn list(&self) -> Vec<LoadedModel> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<LoadedModel>> {
        // A panic elsewhere cannot leave the list half-updated (each change is one
        // call on the Vec), so a poisoned lock is still usable.
        self.loaded.lock().unwrap_or_else(|p| p.into_inner())
    }
}
