//! What to train and evaluate on: a manifest CSV (the format of
//! `../shared/data/manifest.csv`: `path` relative to the manifest, `modality`, `cls`,
//! `region`, `kind`, `split`), or a folder tree `<modality>/<class>/<file>`.

use m3ret_core::modality::Modality;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub path: PathBuf,
    pub modality: Modality,
    /// The retrieval label: same `cls`, a hit in in-modality retrieval.
    pub cls: String,
    /// The body region: same region, a hit in cross-modal retrieval.
    pub region: String,
    /// image2d, video, volume or dicom-series.
    pub kind: String,
    pub split: String,
}

#[derive(serde::Deserialize)]
struct Row {
    path: String,
    modality: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    cls: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    split: String,
}

/// Reads a manifest file, or walks a folder tree.
pub fn load(source: &Path) -> Result<Vec<Item>, String> {
    if source.is_dir() {
        return from_tree(source);
    }
    let base = source.parent().unwrap_or(Path::new("."));
    let mut reader =
        csv::Reader::from_path(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let mut items = Vec::new();
    for (i, row) in reader.deserialize::<Row>().enumerate() {
        let row = row.map_err(|e| format!("{} row {}: {e}", source.display(), i + 2))?;
        let modality = parse_modality(&row.modality)
            .map_err(|e| format!("{} row {}: {e}", source.display(), i + 2))?;
        items.push(Item {
            path: base.join(&row.path),
            modality,
            cls: if row.cls.is_empty() {
                format!("{}_unlabelled", row.modality)
            } else {
                row.cls
            },
            region: row.region,
            kind: row.kind,
            split: row.split,
        });
    }
    Ok(items)
}

fn parse_modality(text: &str) -> Result<Modality, String> {
    Modality::ALL
        .into_iter()
        .find(|m| m.name() == text.trim())
        .ok_or_else(|| format!("unknown modality \"{text}\""))
}

/// `<modality>/<class>/<file>`: class names become `cls`; region is the class name's
/// part before the first `_` (e.g. `chest_covid19` -> `chest`).
fn from_tree(root: &Path) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    for m in sorted_dir(root)? {
        let Ok(modality) = parse_modality(&name(&m)) else {
            continue;
        };
        for class in sorted_dir(&m)?.into_iter().filter(|p| p.is_dir()) {
            let cls = name(&class);
            let region = cls.split('_').next().unwrap_or("").to_string();
            for path in sorted_dir(&class)? {
                let kind = if path.is_dir() { "dicom-series" } else { "" }.to_string();
                items.push(Item {
                    path,
                    modality,
                    cls: cls.clone(),
                    region: region.clone(),
                    kind,
                    split: String::new(),
                });
            }
        }
    }
    if items.is_empty() {
        return Err(format!(
            "{}: no <modality>/<class>/<file> entries found",
            root.display()
        ));
    }
    Ok(items)
}

fn sorted_dir(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    Ok(entries)
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Keeps items of `splits` (empty: all) and not of `excluded` modalities.
pub fn select(items: Vec<Item>, splits: &[String], excluded: &[Modality]) -> Vec<Item> {
    items
        .into_iter()
        .filter(|i| splits.is_empty() || splits.contains(&i.split))
        .filter(|i| !excluded.contains(&i.modality))
        .collect()
}

/// The bytes of an item: one buffer, or one per file for a DICOM series folder.
pub fn read_item(item: &Item) -> Result<Vec<Vec<u8>>, String> {
    if item.path.is_dir() {
        let files = sorted_dir(&item.path)?;
        files
            .iter()
            .map(|f| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display())))
            .collect()
    } else {
        Ok(vec![
            std::fs::read(&item.path).map_err(|e| format!("{}: {e}", item.path.display()))?
        ])
    }
}
