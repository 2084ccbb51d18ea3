//! Choosing an element's links among candidates (Algorithm 4 of the paper, as in
//! hnswlib): keep a candidate only if it is nearer to the element than to every
//! link already kept, so links spread in different directions instead of all
//! pointing into the nearest cluster.

use super::Candidate;

/// `m` of `candidates` (sorted nearest first by distance to the element), or all of
/// them when there are fewer: those the heuristic accepts, then the nearest of those
/// it pruned (the paper's keepPrunedConnections, as pgvector does). Without the
/// second part an element among near-duplicates keeps one or two links, and the
/// few in-links it gets back are soon replaced: on 20,000 near-duplicate rows 11%
/// of the elements could no longer be reached. `between(a, b)` is the distance
/// between two candidates.
pub fn select_neighbors<Id: Copy + PartialEq>(
    candidates: &[Candidate<Id>],
    m: usize,
    between: impl FnMut(Id, Id) -> f32,
) -> Vec<Candidate<Id>> {
    if candidates.len() <= m {
        return candidates.to_vec();
    }
    let mut kept = extend_neighbors(Vec::with_capacity(m), candidates, m, between);
    fill_nearest(&mut kept, candidates, m);
    kept
}

/// Adds to `kept` (links an element keeps in any case) those of `candidates`
/// (sorted nearest first) that the heuristic accepts next to them, up to `m` in all.
pub fn extend_neighbors<Id: Copy>(
    mut kept: Vec<Candidate<Id>>,
    candidates: &[Candidate<Id>],
    m: usize,
    mut between: impl FnMut(Id, Id) -> f32,
) -> Vec<Candidate<Id>> {
    for &c in candidates {
        if kept.len() == m {
            break;
        }
        if kept.iter().all(|k| between(c.id, k.id) > c.distance) {
            kept.push(c);
        }
    }
    kept
}

/// Fills `links` up to `max` with the nearest of `candidates` (sorted nearest first)
/// not in it yet: the paper's keepPrunedConnections, for lists that must stay full.
pub fn fill_nearest<Id: Copy + PartialEq>(
    links: &mut Vec<Candidate<Id>>,
    candidates: &[Candidate<Id>],
    max: usize,
) {
    for c in candidates {
        if links.len() >= max {
            break;
        }
        if !links.iter().any(|l| l.id == c.id) {
            links.push(*c);
        }
    }
}

/// A link of a list with what [`reselect`] needs to re-select the list cheaply: its
/// distance to the list's owner, and whether the heuristic accepted it the last
/// time the list was selected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoredLink<Id> {
    pub id: Id,
    pub distance: f32,
    pub accepted: bool,
}

/// [`select_neighbors`] for a list that was full and gained one candidate, `new`,
/// re-using the heuristic's earlier verdicts when `known` says every other
/// candidate's `accepted` flag is from the list's last selection in this same
/// order (sorted nearest first, ties broken the same way each time). The verdict on
/// a candidate depends only on the candidates accepted before it, so only what
/// `new` changes is checked again (as pgvector caches its `closer` flags):
/// - before `new`, and after it if `new` was pruned: the verdicts stand;
/// - once `new` (or a candidate it let in) is accepted, an accepted candidate is
///   checked against those additions only, since it was nearer to the owner than
///   to everything accepted before; a pruned one is checked afresh only if some
///   accepted one was pruned since, otherwise what pruned it is still there.
///
/// Without `known`, every verdict is computed. Returns the `m` kept links, flags
/// set, in the same order and with the same result as [`select_neighbors`].
pub fn reselect<Id: Copy + PartialEq>(
    candidates: &mut [ScoredLink<Id>],
    m: usize,
    known: bool,
    new: Id,
    mut between: impl FnMut(Id, Id) -> f32,
) -> Vec<ScoredLink<Id>> {
    let mut kept: Vec<ScoredLink<Id>> = Vec::with_capacity(m);
    let mut kept_ids: Vec<Id> = Vec::with_capacity(m);
    let mut pruned = Vec::new();
    let mut added: Vec<Id> = Vec::new();
    let mut pruned_since = false;
    for c in candidates.iter_mut() {
        if kept.len() == m {
            break;
        }
        // The heuristic's test: nearer to the owner than to each of `others`.
        let (id, distance) = (c.id, c.distance);
        let mut nearer_than_all =
            |mut others: std::slice::Iter<'_, Id>| others.all(|&k| between(id, k) > distance);
        if !known {
            c.accepted = nearer_than_all(kept_ids.iter());
        } else if c.id == new || (!c.accepted && pruned_since) {
            c.accepted = nearer_than_all(kept_ids.iter());
            if c.accepted {
                added.push(c.id);
            }
        } else if c.accepted && !added.is_empty() {
            c.accepted = nearer_than_all(added.iter());
            pruned_since |= !c.accepted;
        }
        if c.accepted {
            kept.push(*c);
            kept_ids.push(c.id);
        } else {
            pruned.push(*c);
        }
    }
    // keepPrunedConnections, as select_neighbors: the nearest pruned fill the list.
    kept.extend(pruned.into_iter().take(m - kept.len()));
    kept
}

/// The step after a full list was re-selected with one new candidate: a list that
/// drops its link to `left_out` may take away `left_out`'s last way in. So unless
/// `expendable(left_out)` says it has another, `left_out` stays in `kept` and the
/// farthest kept link that is expendable goes instead (`by_distance` lists the
/// candidates nearest first). False, with `kept` unchanged, when no kept link is
/// expendable either.
///
/// What "expendable" means is the caller's: the in-memory build counts every
/// element's in-links, the on-disk insert asks whether the new element leads to
/// the target too.
pub fn spare_left_out<Id: Copy + PartialEq>(
    kept: &mut [Id],
    by_distance: &[Id],
    left_out: Id,
    mut expendable: impl FnMut(Id) -> bool,
) -> bool {
    if expendable(left_out) {
        return true;
    }
    let victim = by_distance
        .iter()
        .rev()
        .copied()
        .find(|&id| kept.contains(&id) && expendable(id));
    let Some(victim) = victim else {
        return false;
    };
    let slot = kept
        .iter()
        .position(|&id| id == victim)
        .expect("the victim is kept");
    kept[slot] = left_out;
    true
}
