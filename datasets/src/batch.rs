//! Turning splits into training input: normalisation to `f32`, seeded shuffling, batching and a
//! seeded validation split. Everything here is deterministic for a given seed.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::split::Split;

/// Pixels of images `indices` scaled to [0, 1] and standardised with `mean` and `std`.
///
/// # Shapes
/// Returns `[indices.len(), rows * cols]`, row-major.
pub fn normalize(split: &Split, indices: &[usize], mean: f32, std: f32) -> Vec<f32> {
    let scale = 1.0 / (255.0 * std);
    let shift = mean / std;
    let mut out = Vec::with_capacity(indices.len() * split.image_size());
    for &i in indices {
        out.extend(split.image(i).iter().map(|&p| p as f32 * scale - shift));
    }
    out
}

/// `0..n` shuffled by a generator seeded with `seed` (use `seed + epoch` for per-epoch orders).
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    idx
}

/// Splits off a validation set: a seeded random `fraction` of `split` (at least one image when
/// `fraction > 0`). Returns `(train, validation)`.
pub fn validation_split(split: &Split, fraction: f64, seed: u64) -> (Split, Split) {
    let order = shuffled(split.len(), seed);
    let n_val = if fraction <= 0.0 { 0 } else { ((split.len() as f64 * fraction).round() as usize).clamp(1, split.len()) };
    let (val, train) = order.split_at(n_val);
    (split.select(train), split.select(val))
}

/// One batch: normalised inputs `[len, rows * cols]` and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: Vec<f32>,
    pub labels: Vec<u8>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Iterates over `split` in batches of `batch_size` in the order `indices` (the last batch may be
/// smaller).
pub fn batches<'a>(split: &'a Split, indices: &'a [usize], batch_size: usize, mean: f32, std: f32) -> impl Iterator<Item = Batch> + 'a {
    indices
        .chunks(batch_size.max(1))
        .map(move |chunk| Batch { inputs: normalize(split, chunk, mean, std), labels: chunk.iter().map(|&i| split.labels[i]).collect() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(n: usize) -> Split {
        Split { rows: 1, cols: 2, pixels: (0..2 * n).map(|i| i as u8).collect(), labels: (0..n).map(|i| (i % 3) as u8).collect() }
    }

    #[test]
    fn normalisation_standardises() {
        let s = Split { rows: 1, cols: 2, pixels: vec![0, 255], labels: vec![0] };
        let x = normalize(&s, &[0], 0.5, 0.25);
        assert!((x[0] + 2.0).abs() < 1e-6 && (x[1] - 2.0).abs() < 1e-6, "{x:?}");
    }

    #[test]
    fn shuffling_is_seeded_and_a_permutation() {
        assert_eq!(shuffled(100, 7), shuffled(100, 7));
        assert_ne!(shuffled(100, 7), shuffled(100, 8));
        let mut s = shuffled(100, 7);
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn validation_split_is_disjoint_and_complete() {
        let s = split(50);
        let (train, val) = validation_split(&s, 0.2, 1);
        assert_eq!((train.len(), val.len()), (40, 10));
        let mut firsts: Vec<u8> = train.pixels.chunks(2).chain(val.pixels.chunks(2)).map(|c| c[0]).collect();
        firsts.sort();
        assert_eq!(firsts, (0..50).map(|i| (2 * i) as u8).collect::<Vec<_>>());
        assert_eq!(validation_split(&s, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn batches_cover_everything_once() {
        let s = split(10);
        let order = shuffled(10, 3);
        let bs: Vec<Batch> = batches(&s, &order, 4, 0.0, 1.0).collect();
        assert_eq!(bs.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(bs[0].inputs.len(), 8);
        assert_eq!(bs[0].labels[0], s.labels[order[0]]);
    }
}
