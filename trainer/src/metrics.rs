//! Retrieval metrics over L2-normalised embeddings.
//!
//! For each query, the gallery (every other item of the target set) is ranked by
//! cosine similarity. The *rank* of a query is the 1-based position of its first
//! hit. Recall@K is the fraction of queries whose rank is <= K; MnR and MdR are the
//! mean and median of the ranks. Queries with no possible hit are left out.

use m3ret_core::vector::distance::dot;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Retrieval {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mean_rank: f64,
    pub median_rank: f64,
    /// 95% bootstrap intervals of the recalls: `[low, high]`.
    pub ci95: RecallIntervals,
}

/// Percentile bootstrap intervals (2.5% and 97.5%) of R@1, R@5 and R@10.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct RecallIntervals {
    pub recall_at_1: [f64; 2],
    pub recall_at_5: [f64; 2],
    pub recall_at_10: [f64; 2],
}

/// Resamples drawn for each interval; with a fixed seed, reports are reproducible.
const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The queries are resampled with replacement, `BOOTSTRAP_RESAMPLES` times; each
/// recall's interval is the 2.5th and 97.5th percentile of the resampled recalls.
pub fn bootstrap_intervals(ranks: &[usize]) -> RecallIntervals {
    let n = ranks.len();
    if n == 0 {
        return RecallIntervals::default();
    }
    // A fixed, seeded stream: the same report for the same ranks.
    let mut rng = m3ret_core::hnsw::LevelRng::new(0x6d33_7265_745f_6369);
    let mut next = move || ((rng.next_unit() * n as f64) as usize).min(n - 1);
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        let mut hits = [0usize; 3];
        for _ in 0..n {
            let r = ranks[next()];
            for (h, k) in hits.iter_mut().zip([1, 5, 10]) {
                *h += (r <= k) as usize;
            }
        }
        for (s, h) in samples.iter_mut().zip(hits) {
            s.push(h as f64 / n as f64);
        }
    }
    let interval = |s: &mut Vec<f64>| {
        s.sort_by(f64::total_cmp);
        let at = |q: f64| s[((q * (s.len() - 1) as f64).round() as usize).min(s.len() - 1)];
        [at(0.025), at(0.975)]
    };
    let [a, b, c] = &mut samples;
    RecallIntervals {
        recall_at_1: interval(a),
        recall_at_5: interval(b),
        recall_at_10: interval(c),
    }
}

/// Ranks of the first hit for each query against `gallery`; `is_hit(q, g)` says
/// whether gallery item g answers query q; `same(q, g)` marks the query itself,
/// which is never part of its own gallery.
pub fn first_hit_ranks(
    queries: &[&[f32]],
    gallery: &[&[f32]],
    is_hit: impl Fn(usize, usize) -> bool,
    same: impl Fn(usize, usize) -> bool,
) -> Vec<usize> {
    let mut ranks = Vec::new();
    for (q, query) in queries.iter().enumerate() {
        let mut order: Vec<(usize, f32)> = gallery
            .iter()
            .enumerate()
            .filter(|(g, _)| !same(q, *g))
            .map(|(g, e)| (g, dot(query, e)))
            .collect();
        if !order.iter().any(|(g, _)| is_hit(q, *g)) {
            continue;
        }
        // Highest similarity first; ties broken by index so results are reproducible.
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let rank = order.iter().position(|(g, _)| is_hit(q, *g)).unwrap() + 1;
        ranks.push(rank);
    }
    ranks
}

pub fn summarise(ranks: &[usize]) -> Retrieval {
    let n = ranks.len();
    if n == 0 {
        return Retrieval {
            queries: 0,
            recall_at_1: 0.0,
            recall_at_5: 0.0,
            recall_at_10: 0.0,
            mean_rank: 0.0,
            median_rank: 0.0,
            ci95: RecallIntervals::default(),
        };
    }
    let recall = |k: usize| ranks.iter().filter(|r| **r <= k).count() as f64 / n as f64;
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    let median = if n % 2 == 1 {
        sorted[n / 2] as f64
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0
    };
    Retrieval {
        queries: n,
        recall_at_1: recall(1),
        recall_at_5: recall(5),
        recall_at_10: recall(10),
        mean_rank: ranks.iter().sum::<usize>() as f64 / n as f64,
        median_rank: median,
        ci95: bootstrap_intervals(ranks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_summary_on_a_hand_made_case() {
        // Four unit vectors: 0 and 1 close together (class a), 2 and 3 close (class b),
        // but 3 is closer to 0 than 1 is.
        let e: Vec<Vec<f32>> = vec![
            vec![1.0, 0.0],
            vec![0.6, 0.8],
            vec![0.0, 1.0],
            vec![0.8, 0.6],
        ];
        let cls = ["a", "a", "b", "b"];
        let refs: Vec<&[f32]> = e.iter().map(|v| v.as_slice()).collect();
        let ranks = first_hit_ranks(&refs, &refs, |q, g| cls[q] == cls[g], |q, g| q == g);
        // q0: order 3 (0.8), 1 (0.6), 2 (0) -> first "a" at rank 2.
        // q1: order 3 (0.96), 2 (0.8), 0 (0.6) -> rank 3.
        // q2: order 1 (0.8), 3 (0.6), 0 (0) -> rank 2.
        // q3: order 1 (0.96), 0 (0.8), 2 (0.6) -> rank 3.
        assert_eq!(ranks, vec![2, 3, 2, 3]);
        let s = summarise(&ranks);
        assert_eq!(
            (
                s.queries,
                s.recall_at_1,
                s.recall_at_5,
                s.mean_rank,
                s.median_rank
            ),
            (4, 0.0, 1.0, 2.5, 2.5)
        );
    }

    #[test]
    fn bootstrap_intervals_hold_the_recall_and_narrow_with_more_queries() {
        // R@1 = 0.5 over 20 queries, then over 2,000.
        let few: Vec<usize> = (0..20).map(|i| if i % 2 == 0 { 1 } else { 7 }).collect();
        let many: Vec<usize> = (0..2000).map(|i| if i % 2 == 0 { 1 } else { 7 }).collect();
        let (a, b) = (bootstrap_intervals(&few), bootstrap_intervals(&many));
        for ci in [a.recall_at_1, b.recall_at_1] {
            assert!(ci[0] < 0.5 && 0.5 < ci[1], "{ci:?}");
        }
        // About 0.5 +- 1.96 sqrt(0.25 / n): +-0.22 for 20 queries, +-0.022 for 2,000.
        assert!(
            (a.recall_at_1[1] - a.recall_at_1[0] - 0.44).abs() < 0.1,
            "{a:?}"
        );
        assert!(
            (b.recall_at_1[1] - b.recall_at_1[0] - 0.044).abs() < 0.01,
            "{b:?}"
        );
        // Every query has rank <= 10: no uncertainty at all.
        assert_eq!(a.recall_at_10, [1.0, 1.0]);
    }

    #[test]
    fn queries_without_a_possible_hit_are_left_out() {
        let e: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let refs: Vec<&[f32]> = e.iter().map(|v| v.as_slice()).collect();
        let ranks = first_hit_ranks(&refs, &refs, |q, g| q == 0 && g == 1, |q, g| q == g);
        assert_eq!(ranks, vec![2 - 1]);
        assert_eq!(summarise(&[]).queries, 0);
    }
}
