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

/// Keeps items of `splits` (empty: all) and not of `excluded` modalities. A split
/// written `NAME:a` or `NAME:b` is one half of split NAME (see [`half_of`]).
pub fn select(items: Vec<Item>, splits: &[String], excluded: &[Modality]) -> Vec<Item> {
    items
        .into_iter()
        .filter(|i| splits.is_empty() || splits.iter().any(|s| in_split(i, s)))
        .filter(|i| !excluded.contains(&i.modality))
        .collect()
}

fn in_split(item: &Item, split: &str) -> bool {
    match split.rsplit_once(':') {
        Some((name, half @ ("a" | "b"))) => item.split == name && half_of(item) == half,
        _ => item.split == split,
    }
}

/// The half, "a" or "b", an item falls in: the low bit of the sha256 of its last two
/// path components (class folder and file name), so that the halves are the same on
/// every machine wherever the corpus lies. For comparing readouts on a training split
/// without touching the held-out one: fit on `train:a`, score on `train:b`. The halves
/// are drawn per file, not per patient, so one patient can sit in both.
pub fn half_of(item: &Item) -> &'static str {
    use sha2::{Digest, Sha256};
    let tail: Vec<String> = item
        .path
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let digest = Sha256::digest(tail.join("/").as_bytes());
    if digest[0] & 1 == 0 {
        "a"
    } else {
        "b"
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &str, split: &str) -> Item {
        Item {
            path: PathBuf::from(path),
            modality: Modality::Xray,
            cls: "c".into(),
            region: "chest".into(),
            kind: String::new(),
            split: split.into(),
        }
    }

    fn corpus(root: &str) -> Vec<Item> {
        (0..400)
            .map(|k| {
                let split = if k % 4 == 0 { "heldout" } else { "train" };
                item(&format!("{root}/xray/class{}/img{k:04}.png", k % 3), split)
            })
            .collect()
    }

    #[test]
    fn the_two_halves_partition_their_split_and_nothing_else() {
        let all = corpus("/data");
        let train = select(all.clone(), &["train".into()], &[]);
        let a = select(all.clone(), &["train:a".into()], &[]);
        let b = select(all.clone(), &["train:b".into()], &[]);
        assert_eq!(a.len() + b.len(), train.len());
        assert!(a.iter().all(|i| !b.contains(i)));
        assert!(a.iter().chain(&b).all(|i| i.split == "train"));
        // Hashed, so roughly even: 300 items, each half well away from empty.
        assert!(a.len() > 100 && b.len() > 100, "{} / {}", a.len(), b.len());
        let both = select(all, &["train:a".into(), "train:b".into()], &[]);
        assert_eq!(both, train);
    }

    #[test]
    fn an_item_keeps_its_half_wherever_the_corpus_lies() {
        let here = corpus("/work/shared/data");
        let there = corpus("/mnt/elsewhere/corpus");
        for (x, y) in here.iter().zip(&there) {
            assert_eq!(half_of(x), half_of(y), "{}", x.path.display());
        }
    }

    #[test]
    fn a_split_named_with_a_colon_but_no_half_is_a_plain_split() {
        let all = vec![
            item("/d/x/c/1.png", "site:2"),
            item("/d/x/c/2.png", "train"),
        ];
        let picked = select(all, &["site:2".into()], &[]);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].split, "site:2");
    }
}
