//! Ranking: min-max normalisation, the hybrid fusion of ALS and lyrics scores, the random subset
//! of a larger top pool (freshness), and popularity sampling ∝ ln(plays_7d + 2).

use std::collections::HashMap;

use rand::Rng;

/// Scores scaled to [0, 1]; all-equal (or single) scores become 1, as in the seed.
pub fn min_max(scores: &[(String, f32)]) -> HashMap<String, f32> {
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), (_, s)| {
            (lo.min(*s), hi.max(*s))
        });
    scores
        .iter()
        .map(|(id, s)| {
            let n = if hi > lo { (s - lo) / (hi - lo) } else { 1.0 };
            (id.clone(), n)
        })
        .collect()
}

/// Weights of the two sides of a hybrid ranking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub als: f32,
    pub lyrics: f32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            als: 0.6,
            lyrics: 0.4,
        }
    }
}

/// One fused candidate: its score and the weighted part each side contributed (`None` when the
/// side did not propose it), so a listener can be told why a song was picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub id: String,
    pub score: f32,
    pub als: Option<f32>,
    pub lyrics: Option<f32>,
}

/// The `n` best ids of `weights.als · norm(als) + weights.lyrics · norm(lyrics)` (a side
/// missing for an id counts 0), best first; ties by id, so the order is deterministic.
pub fn fuse(
    als: &[(String, f32)],
    lyrics: &[(String, f32)],
    weights: Weights,
    n: usize,
) -> Vec<Fused> {
    let mut combined: HashMap<String, Fused> = HashMap::new();
    for (id, s) in min_max(als) {
        let part = weights.als * s;
        let f = combined.entry(id.clone()).or_insert_with(|| Fused::new(id));
        f.als = Some(part);
        f.score += part;
    }
    for (id, s) in min_max(lyrics) {
        let part = weights.lyrics * s;
        let f = combined.entry(id.clone()).or_insert_with(|| Fused::new(id));
        f.lyrics = Some(part);
        f.score += part;
    }
    let mut ranked: Vec<Fused> = combined.into_values().collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    ranked.truncate(n);
    ranked
}

impl Fused {
    fn new(id: String) -> Fused {
        Fused {
            id,
            score: 0.0,
            als: None,
            lyrics: None,
        }
    }
}

/// `take` items of `pool` chosen uniformly at random, in random order (the seed's only
/// diversity mechanism: a random subset of a larger top pool).
pub fn random_subset<T: Clone>(pool: &[T], take: usize, rng: &mut impl Rng) -> Vec<T> {
    let mut items: Vec<T> = pool.to_vec();
    let take = take.min(items.len());
    for i in 0..take {
        let j = rng.random_range(i..items.len());
        items.swap(i, j);
    }
    items.truncate(take);
    items
}

/// `limit` ids sampled without replacement with probability ∝ ln(plays_7d + 2)
/// (Efraimidis–Spirakis: the `limit` largest u^(1/w)), in the order drawn.
pub fn popularity_sample(
    candidates: &[(String, i64)],
    limit: usize,
    rng: &mut impl Rng,
) -> Vec<String> {
    let mut keyed: Vec<(f64, &String)> = candidates
        .iter()
        .map(|(id, plays_7d)| {
            let w = ((*plays_7d).max(0) as f64 + 2.0).ln();
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (u.powf(1.0 / w), id)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed
        .into_iter()
        .take(limit)
        .map(|(_, id)| id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn scores(v: &[(&str, f32)]) -> Vec<(String, f32)> {
        v.iter().map(|(id, s)| (id.to_string(), *s)).collect()
    }

    #[test]
    fn min_max_scales_and_handles_equal_scores() {
        let n = min_max(&scores(&[("a", 2.0), ("b", 4.0), ("c", 3.0)]));
        assert_eq!((n["a"], n["b"], n["c"]), (0.0, 1.0, 0.5));
        let n = min_max(&scores(&[("a", 0.3), ("b", 0.3)]));
        assert_eq!((n["a"], n["b"]), (1.0, 1.0));
        assert!(min_max(&[]).is_empty());
    }

    #[test]
    fn fusion_weighs_both_sides_and_counts_a_missing_side_as_zero() {
        let als = scores(&[("a", 10.0), ("b", 5.0), ("c", 0.0)]);
        let lyrics = scores(&[("c", 0.9), ("d", 0.5), ("b", 0.1)]);
        let got = fuse(&als, &lyrics, Weights::default(), 10);
        // a: .6·1 = .6; b: .6·.5 + .4·0 = .3; c: 0 + .4·1 = .4; d: .4·.5 = .2
        let ids: Vec<&str> = got.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "b", "d"]);
        assert!((got[0].score - 0.6).abs() < 1e-6 && (got[1].score - 0.4).abs() < 1e-6);
        // The parts say why: b was proposed by both sides (lyrics' part 0), d by lyrics only.
        let near = |x: Option<f32>, y: f32| x.is_some_and(|x| (x - y).abs() < 1e-6);
        assert!(
            near(got[2].als, 0.3) && near(got[2].lyrics, 0.0),
            "{:?}",
            got[2]
        );
        assert!(
            got[3].als.is_none() && near(got[3].lyrics, 0.2),
            "{:?}",
            got[3]
        );
        assert_eq!(fuse(&als, &[], Weights::default(), 2).len(), 2);
        let only_lyrics = fuse(&[], &lyrics, Weights::default(), 1);
        assert_eq!(only_lyrics[0].id, "c");
    }

    #[test]
    fn popularity_sampling_prefers_hits_and_never_repeats() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let candidates: Vec<(String, i64)> = (0..100)
            .map(|i| (format!("s{i}"), if i < 10 { 100_000 } else { 0 }))
            .collect();
        let mut hits = 0;
        for _ in 0..200 {
            let got = popularity_sample(&candidates, 10, &mut rng);
            let unique: std::collections::HashSet<_> = got.iter().collect();
            assert_eq!((got.len(), unique.len()), (10, 10));
            hits += got
                .iter()
                .filter(|id| id[1..].parse::<u32>().unwrap() < 10)
                .count();
        }
        // ln(100002) ≈ 11.5 vs ln 2 ≈ 0.69: the ten hits hold ~62 % of the weight, so far more
        // than their 10 % share of the candidates is drawn.
        assert!(hits > 200 * 10 / 3, "{hits}");
    }

    #[test]
    fn random_subset_takes_distinct_items_of_the_pool() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let pool: Vec<u32> = (0..50).collect();
        let got = random_subset(&pool, 20, &mut rng);
        let unique: std::collections::HashSet<_> = got.iter().collect();
        assert_eq!((got.len(), unique.len()), (20, 20));
        assert_ne!(got, (0..20).collect::<Vec<u32>>());
        assert_eq!(random_subset(&pool, 80, &mut rng).len(), 50);
    }
}
