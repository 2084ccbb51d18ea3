//! `m3ret-train curve`: a run's learning curve (`log.jsonl`, written by
//! `pretrain --eval-every`) as a Markdown table on stdout and a PNG.

use crate::plot::{self, Series};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct CurveArgs {
    /// The run's log.jsonl.
    #[arg(long)]
    log: PathBuf,
    /// Where to draw the curve (PNG): per modality, the trained R@1 solid with a dot
    /// at each evaluation, the untrained encoder's dashed; x = epochs, y = R@1 0 to 1.
    #[arg(long)]
    out: PathBuf,
}

/// One colour per modality, in the order the log names them (alphabetical).
const COLOURS: [[u8; 3]; 6] = [
    [214, 39, 40],   // ct: red
    [44, 160, 44],   // endoscopy: green
    [31, 119, 180],  // mri: blue
    [255, 127, 14],  // ultrasound: orange
    [148, 103, 189], // xray: purple
    [90, 90, 90],
];

pub fn run(args: CurveArgs) -> Result<(), String> {
    let text =
        std::fs::read_to_string(&args.log).map_err(|e| format!("{}: {e}", args.log.display()))?;
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("{} line {}: {e}", args.log.display(), i + 1))
        })
        .collect::<Result<_, _>>()?;
    let first = records
        .first()
        .ok_or_else(|| format!("{}: no evaluation logged yet", args.log.display()))?;
    let modalities: Vec<String> = first["r1"]
        .as_object()
        .ok_or_else(|| format!("{}: the first record has no r1", args.log.display()))?
        .keys()
        .cloned()
        .collect();
    print_table(&records, &modalities);
    let epochs = |r: &serde_json::Value| r["epochs"].as_f64().unwrap_or(0.0);
    let max_x = records.iter().map(epochs).fold(0.0, f64::max);
    let mut series = Vec::new();
    for (i, m) in modalities.iter().enumerate() {
        let colour = COLOURS[i.min(COLOURS.len() - 1)];
        let trained = records
            .iter()
            .map(|r| (epochs(r), r1(r, m, "trained")))
            .collect();
        let zero = r1(first, m, "untrained");
        series.push(Series {
            points: trained,
            colour,
            dashed: false,
        });
        series.push(Series {
            points: vec![(0.0, zero), (max_x, zero)],
            colour,
            dashed: true,
        });
    }
    plot::learning_curve(&series, max_x, &args.out)
}

/// step | epochs | hours | loss | mean R@1 | per modality "trained (untrained)".
fn print_table(records: &[serde_json::Value], modalities: &[String]) {
    println!(
        "| step | epochs | hours | loss | mean R@1 | {} |",
        modalities.join(" | ")
    );
    println!("|{}", "---|".repeat(5 + modalities.len()));
    for r in records {
        let cells: Vec<String> = modalities
            .iter()
            .map(|m| format!("{:.3} ({:.3})", r1(r, m, "trained"), r1(r, m, "untrained")))
            .collect();
        let num = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {:.1} | {:.2} | {} | {:.3} | {} |",
            r["step"],
            num("epochs"),
            num("hours"),
            r["loss"]
                .as_f64()
                .map(|l| format!("{l:.3}"))
                .unwrap_or_else(|| "-".into()),
            num("mean_r1"),
            cells.join(" | ")
        );
    }
}

/// A record's R@1 for `modality`, `kind` being "trained", "untrained" or "raw_pixels".
fn r1(record: &serde_json::Value, modality: &str, kind: &str) -> f64 {
    record["r1"][modality][kind].as_f64().unwrap_or(f64::NAN)
}
