//! `m3ret-train probe` (appendix D): a linear probe on frozen embeddings.
//! Per modality, multinomial logistic regression on standardised features, trained
//! on the manifest's train split and scored on its test split: accuracy, macro
//! precision, macro F1 and macro one-vs-rest AUROC.

use crate::embedset;
use crate::manifest::{self, Item};
use m3ret_core::modality::Modality;
use m3ret_core::model::{parse_device, Embedder, ModelFile};
use std::path::PathBuf;
use tch::{nn, Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// The model file whose (frozen) embeddings are probed.
    #[arg(long)]
    pub model: PathBuf,
    /// A manifest CSV with a split column.
    #[arg(long)]
    pub manifest: PathBuf,
    /// The split to fit on.
    #[arg(long, default_value = "train")]
    pub train_split: String,
    /// The split to score on.
    #[arg(long, default_value = "test")]
    pub test_split: String,
    /// Use at most this many items of each class and split.
    #[arg(long)]
    pub max_per_class: Option<usize>,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision on the CPU: auto (bf16 where the CPU has AMX-BF16 or AVX512-BF16, else f32), bf16 or f32. CUDA runs in bf16 whatever this says.
    #[arg(long, default_value = "auto", value_parser = ["auto", "bf16", "f32"])]
    pub precision: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeScores {
    pub accuracy: f64,
    pub precision: f64,
    pub f1: f64,
    pub auroc: f64,
}

pub fn run(args: ProbeArgs) -> Result<(), String> {
    let device = parse_device(&args.device).map_err(|e| e.to_string())?;
    let file = ModelFile::from_path(&args.model).map_err(|e| e.to_string())?;
    let model = Embedder::from_file(&file, device).map_err(|e| e.to_string())?;
    model.set_cpu_precision(m3ret_core::precision::resolve_name(&args.precision)?.precision);
    let all = manifest::load(&args.manifest)?;
    let pick = |split: &str| {
        crate::eval::cap_per_class(
            manifest::select(all.clone(), &[split.to_string()], &[]),
            args.max_per_class,
        )
    };
    let (train, test) = (pick(&args.train_split), pick(&args.test_split));
    if train.is_empty() || test.is_empty() {
        return Err(format!(
            "no items in split \"{}\" or \"{}\"",
            args.train_split, args.test_split
        ));
    }
    let (etrain, _) = embedset::embed(&train, &model, None, 16);
    let (etest, _) = embedset::embed(&test, &model, None, 16);
    println!("| modality | classes | train | test | accuracy | precision | F1 | AUROC |\n|---|---|---|---|---|---|---|---|");
    for m in Modality::ALL {
        let xs = |items: &[Item], e: &[embedset::Embedded]| -> (Vec<Vec<f32>>, Vec<String>) {
            e.iter()
                .filter(|x| items[x.item].modality == m)
                .map(|x| (x.model.clone(), items[x.item].cls.clone()))
                .unzip()
        };
        let (xtr, ytr) = xs(&train, &etrain);
        let (xte, yte) = xs(&test, &etest);
        let mut classes: Vec<String> = ytr.clone();
        classes.sort();
        classes.dedup();
        if classes.len() < 2 || xte.is_empty() {
            continue;
        }
        let label = |y: &[String]| -> Vec<i64> {
            y.iter()
                .map(|c| {
                    classes
                        .iter()
                        .position(|k| k == c)
                        .map(|p| p as i64)
                        .unwrap_or(-1)
                })
                .collect()
        };
        let (ltr, lte) = (label(&ytr), label(&yte));
        let keep: Vec<usize> = (0..lte.len()).filter(|&i| lte[i] >= 0).collect();
        let xte: Vec<Vec<f32>> = keep.iter().map(|&i| xte[i].clone()).collect();
        let lte: Vec<i64> = keep.iter().map(|&i| lte[i]).collect();
        let probs = fit_and_predict(&xtr, &ltr, &xte, classes.len());
        let s = scores(&probs, &lte, classes.len());
        println!(
            "| {m} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            classes.len(),
            xtr.len(),
            xte.len(),
            s.accuracy,
            s.precision,
            s.f1,
            s.auroc
        );
    }
    Ok(())
}

fn matrix(rows: &[Vec<f32>]) -> Tensor {
    let d = rows[0].len() as i64;
    Tensor::from_slice(&rows.concat()).view([rows.len() as i64, d])
}

/// Softmax regression by full-batch Adam; returns test class probabilities.
pub fn fit_and_predict(
    xtr: &[Vec<f32>],
    ytr: &[i64],
    xte: &[Vec<f32>],
    classes: usize,
) -> Vec<Vec<f32>> {
    tch::manual_seed(0);
    let (xtr, xte) = (matrix(xtr), matrix(xte));
    let mean = xtr.mean_dim(0, true, Kind::Float);
    let std = xtr.std_dim(0, false, true).clamp_min(1e-6);
    let (xtr, xte) = ((&xtr - &mean) / &std, (&xte - &mean) / &std);
    let y = Tensor::from_slice(ytr);
    let vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(vs.root(), xtr.size()[1], classes as i64, Default::default());
    let mut opt = nn::OptimizerConfig::build(
        nn::Adam {
            wd: 1e-4,
            ..Default::default()
        },
        &vs,
        1e-2,
    )
    .unwrap();
    for _ in 0..300 {
        let loss = nn::Module::forward(&linear, &xtr).cross_entropy_for_logits(&y);
        opt.backward_step(&loss);
    }
    let probs = tch::no_grad(|| nn::Module::forward(&linear, &xte).softmax(-1, Kind::Float));
    (0..probs.size()[0])
        .map(|i| Vec::try_from(probs.get(i)).unwrap())
        .collect()
}

/// Accuracy, macro precision, macro F1 and macro one-vs-rest AUROC.
pub fn scores(probs: &[Vec<f32>], labels: &[i64], classes: usize) -> ProbeScores {
    let pred: Vec<usize> = probs
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        })
        .collect();
    let n = labels.len() as f64;
    let accuracy = pred
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count() as f64
        / n;
    let (mut precision, mut f1, mut auroc, mut counted) = (0.0, 0.0, 0.0, 0usize);
    for c in 0..classes {
        let tp = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == c && **l == c as i64)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == c && **l != c as i64)
            .count() as f64;
        let fneg = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p != c && **l == c as i64)
            .count() as f64;
        let p = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
        let r = if tp + fneg > 0.0 {
            tp / (tp + fneg)
        } else {
            0.0
        };
        precision += p;
        f1 += if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        // AUROC: probability that a positive scores above a negative (ties count half).
        let pos: Vec<f32> = probs
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l == c as i64)
            .map(|(p, _)| p[c])
            .collect();
        let neg: Vec<f32> = probs
            .iter()
            .zip(labels)
            .filter(|(_, l)| **l != c as i64)
            .map(|(p, _)| p[c])
            .collect();
        if !pos.is_empty() && !neg.is_empty() {
            let wins: f64 = pos
                .iter()
                .map(|a| {
                    neg.iter()
                        .map(|b| {
                            if a > b {
                                1.0
                            } else if a == b {
                                0.5
                            } else {
                                0.0
                            }
                        })
                        .sum::<f64>()
                })
                .sum();
            auroc += wins / (pos.len() * neg.len()) as f64;
            counted += 1;
        }
    }
    ProbeScores {
        accuracy,
        precision: precision / classes as f64,
        f1: f1 / classes as f64,
        auroc: auroc / counted.max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_on_known_predictions() {
        let probs = vec![
            vec![0.9, 0.1],
            vec![0.6, 0.4],
            vec![0.3, 0.7],
            vec![0.55, 0.45],
        ];
        let labels = vec![0, 0, 1, 1];
        let s = scores(&probs, &labels, 2);
        // Predictions 0,0,1,0: accuracy 3/4; class 0: P 2/3 R 1; class 1: P 1 R 1/2.
        assert_eq!(s.accuracy, 0.75);
        assert!((s.precision - (2.0 / 3.0 + 1.0) / 2.0).abs() < 1e-12);
        assert!((s.f1 - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        // Class 1 scores: positives 0.7, 0.45 vs negatives 0.1, 0.4: all 4 pairs won -> 1.0 (both classes).
        assert_eq!(s.auroc, 1.0);
    }

    #[test]
    fn separable_data_is_learned() {
        let xtr: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                vec![
                    if i % 2 == 0 { 1.0 } else { -1.0 } + (i as f32) * 0.001,
                    0.5,
                ]
            })
            .collect();
        let ytr: Vec<i64> = (0..40).map(|i| i % 2).collect();
        let probs = fit_and_predict(&xtr, &ytr, &[vec![0.9, 0.5], vec![-0.9, 0.5]], 2);
        assert!(probs[0][0] > 0.9 && probs[1][1] > 0.9, "{probs:?}");
    }
}
