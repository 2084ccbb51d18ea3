//! m3ret-load's throughput against a plain COPY of the same bytes, one cluster,
//! one run: per round, each method loads the whole archive into a fresh table;
//! medians over the rounds. `benches/load.sh` makes the archive and runs this.
//!
//! - `copy`: a client that walks the folder and sends (path, bytes) for every file
//!   in one binary COPY (what a data engineer would write without m3ret);
//! - `m3ret-load`: the loader's default (headers and lengths checked, series grouped);
//! - `m3ret-load --verify-pixels`: every study decoded while loading.
//!
//! M3RET_BENCH_ARCHIVE: the folder; M3RET_LOAD_BIN: the loader; M3RET_BENCH_ROUNDS (3).

use m3ret_e2e::Cluster;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::Type;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn plain_copy(client: &mut postgres::Client, files: &[PathBuf], table: &str) {
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (path text PRIMARY KEY, data bytea)"))
        .unwrap();
    let sink = client
        .copy_in(&format!(
            "COPY {table} (path, data) FROM STDIN (FORMAT binary)"
        ))
        .unwrap();
    let mut writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::BYTEA]);
    for path in files {
        let bytes = std::fs::read(path).unwrap();
        writer
            .write(&[&path.to_string_lossy().as_ref(), &bytes])
            .unwrap();
    }
    writer.finish().unwrap();
}

fn loader(bin: &Path, cluster: &Cluster, archive: &Path, table: &str, extra: &[&str]) {
    let mut client =
        postgres::Client::connect(&cluster.connection_string("bench"), postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
        .unwrap();
    let rejects = std::env::temp_dir().join("m3ret-bench-load-rejects.csv");
    let out = std::process::Command::new(bin)
        .arg(archive)
        .args([
            "--db",
            &cluster.connection_string("bench"),
            "--table",
            table,
        ])
        .arg("--rejects")
        .arg(&rejects)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let archive = PathBuf::from(
        std::env::var("M3RET_BENCH_ARCHIVE").unwrap_or_else(|_| "/tmp/m3ret-bench-archive".into()),
    );
    let bin = PathBuf::from(
        std::env::var("M3RET_LOAD_BIN").expect("M3RET_LOAD_BIN: run benches/load.sh"),
    );
    let rounds: usize = std::env::var("M3RET_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let files = files_under(&archive);
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let cluster = Cluster::start(&[]);
    cluster.database("bench");
    let mut client =
        postgres::Client::connect(&cluster.connection_string("bench"), postgres::NoTls).unwrap();
    let methods = ["copy", "m3ret-load", "m3ret-load --verify-pixels"];
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); methods.len()];
    for round in 0..rounds {
        // A different order each round, so that no method always runs on a warm cache.
        for k in 0..methods.len() {
            let m = (k + round) % methods.len();
            let t = Instant::now();
            match m {
                0 => plain_copy(&mut client, &files, "plain"),
                1 => loader(&bin, &cluster, &archive, "loaded", &[]),
                _ => loader(&bin, &cluster, &archive, "verified", &["--verify-pixels"]),
            }
            seconds[m].push(t.elapsed().as_secs_f64());
            client.batch_execute("CHECKPOINT").unwrap();
        }
    }
    println!(
        "{} files, {:.1} MB, {rounds} rounds, medians",
        files.len(),
        bytes as f64 / 1e6
    );
    println!(
        "{:28} {:>9} {:>9} {:>9} {:>13}",
        "method", "seconds", "files/s", "MB/s", "vs COPY"
    );
    let base = median(seconds[0].clone());
    for (m, name) in methods.iter().enumerate() {
        let s = median(seconds[m].clone());
        println!(
            "{name:28} {s:>9.2} {:>9.0} {:>9.1} {:>13.2}",
            files.len() as f64 / s,
            bytes as f64 / 1e6 / s,
            base / s
        );
    }
}
