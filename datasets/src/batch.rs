//! Turning splits into training input: normalisation to `f32`, seeded shuffling, batching and a
//! seeded validation split. Everything here is deterministic for a given seed.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::split::{Normalization, Split};

/// Training-time augmentation, as torchvision's `RandomCrop(size, padding)` then
/// `RandomHorizontalFlip()`: each image is padded with zeros by `crop_padding` on every side, a
/// window of its own size is cut at a random offset, and it is mirrored left-right with
/// probability one half when `flip`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Augment {
    pub crop_padding: usize,
    pub flip: bool,
}

impl Augment {
    pub fn is_none(&self) -> bool {
        self.crop_padding == 0 && !self.flip
    }
}

/// Images `indices` as network inputs, standardised per channel by `norm`; with `augment`, each
/// image is cropped and flipped at random, the draws seeded by the seed and the image's index.
///
/// # Shapes
/// Returns `[indices.len(), channels * rows * cols]`, row-major.
pub fn normalize(split: &Split, indices: &[usize], norm: &Normalization, augment: Option<(&Augment, u64)>) -> Vec<f32> {
    let plane = split.rows * split.cols;
    let mut out = Vec::with_capacity(indices.len() * split.image_size());
    // `raw * scale - shift` is `(raw / unit - mean) / std`.
    let unit = split.pixels.unit();
    let scales: Vec<(f32, f32)> = norm.mean.iter().zip(&norm.std).map(|(&m, &s)| (1.0 / (unit * s), m / s)).collect();
    for &i in indices {
        let start = out.len();
        match augment {
            Some((a, seed)) if !a.is_none() => augmented(split, i, a, seed, &mut out),
            _ => split.pixels.extend_raw(split.range(i), &mut out),
        }
        for (channel, &(scale, shift)) in out[start..].chunks_mut(plane.max(1)).zip(&scales) {
            channel.iter_mut().for_each(|v| *v = *v * scale - shift);
        }
    }
    out
}

/// Image `i` cropped and flipped by draws seeded from `seed` and `i`, appended to `out`
/// (positions outside the image read 0).
fn augmented(split: &Split, i: usize, a: &Augment, seed: u64, out: &mut Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let pad = a.crop_padding as i64;
    let (dy, dx) = (rng.random_range(-pad..=pad) as isize, rng.random_range(-pad..=pad) as isize);
    let flip = a.flip && rng.random_bool(0.5);
    let (rows, cols) = (split.rows as isize, split.cols as isize);
    let base = split.range(i).start;
    for c in 0..split.channels {
        for y in 0..rows {
            for x in 0..cols {
                let (sy, sx) = (y + dy, if flip { cols - 1 - x } else { x } + dx);
                let inside = (0..rows).contains(&sy) && (0..cols).contains(&sx);
                let at = base + (c * split.rows * split.cols) + (sy * cols + sx).max(0) as usize;
                out.push(if inside { split.pixels.raw(at) } else { 0.0 });
            }
        }
    }
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

/// One batch: normalised inputs `[len, channels * rows * cols]` and their labels.
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
/// smaller), augmented where `augment` says (see `normalize`).
pub fn batches<'a>(
    split: &'a Split,
    indices: &'a [usize],
    batch_size: usize,
    norm: &'a Normalization,
    augment: Option<(&'a Augment, u64)>,
) -> impl Iterator<Item = Batch> + 'a {
    indices.chunks(batch_size.max(1)).map(move |chunk| Batch {
        inputs: normalize(split, chunk, norm, augment),
        labels: chunk.iter().map(|&i| split.labels[i]).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Pixels;

    fn split(n: usize) -> Split {
        let pixels = Pixels::Bytes((0..2 * n).map(|i| i as u8).collect());
        Split { channels: 1, rows: 1, cols: 2, pixels, labels: (0..n).map(|i| (i % 3) as u8).collect() }
    }

    #[test]
    fn normalisation_standardises() {
        let s = Split { channels: 1, rows: 1, cols: 2, pixels: Pixels::Bytes(vec![0, 255]), labels: vec![0] };
        let x = normalize(&s, &[0], &Normalization::uniform(0.5, 0.25, 1), None);
        assert!((x[0] + 2.0).abs() < 1e-6 && (x[1] - 2.0).abs() < 1e-6, "{x:?}");
        // Floats are taken as they are; each channel has its own constants.
        let s = Split { channels: 2, rows: 1, cols: 1, pixels: Pixels::Floats(vec![3.0, 3.0]), labels: vec![0] };
        let x = normalize(&s, &[0], &Normalization { mean: vec![1.0, 2.0], std: vec![2.0, 0.5] }, None);
        assert_eq!(x, vec![1.0, 2.0]);
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
        let bytes = |s: &Split| s.pixels.bytes().unwrap().to_vec();
        let mut firsts: Vec<u8> = bytes(&train).chunks(2).chain(bytes(&val).chunks(2)).map(|c| c[0]).collect();
        firsts.sort();
        assert_eq!(firsts, (0..50).map(|i| (2 * i) as u8).collect::<Vec<_>>());
        assert_eq!(validation_split(&s, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn batches_cover_everything_once() {
        let s = split(10);
        let order = shuffled(10, 3);
        let norm = Normalization::uniform(0.0, 1.0, 1);
        let bs: Vec<Batch> = batches(&s, &order, 4, &norm, None).collect();
        assert_eq!(bs.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(bs[0].inputs.len(), 8);
        assert_eq!(bs[0].labels[0], s.labels[order[0]]);
    }

    /// A crop moves the image by at most the padding and fills with zeros; a flip mirrors it;
    /// the same seed gives the same draws, and without augmentation nothing changes.
    #[test]
    fn augmentation_crops_and_flips_reproducibly() {
        let (c, h, w) = (2, 3, 4);
        let pixels: Vec<f32> = (1..=(c * h * w) as u32).map(|v| v as f32).collect();
        let s = Split { channels: c, rows: h, cols: w, pixels: Pixels::Floats(pixels.clone()), labels: vec![0] };
        let norm = Normalization::uniform(0.0, 1.0, c);
        assert_eq!(normalize(&s, &[0], &norm, Some((&Augment::default(), 3))), pixels);
        let flip = Augment { crop_padding: 0, flip: true };
        let mirrored: Vec<f32> = pixels.chunks(w).flat_map(|row| row.iter().rev().copied()).collect();
        let outcomes: Vec<Vec<f32>> = (0..16).map(|seed| normalize(&s, &[0], &norm, Some((&flip, seed)))).collect();
        assert!(outcomes.iter().all(|o| *o == pixels || *o == mirrored));
        assert!(outcomes.contains(&pixels) && outcomes.contains(&mirrored), "both outcomes occur");
        let crop = Augment { crop_padding: 1, flip: false };
        for seed in 0..16 {
            let x = normalize(&s, &[0], &norm, Some((&crop, seed)));
            assert_eq!(x, normalize(&s, &[0], &norm, Some((&crop, seed))));
            // Every value is a zero or an original value within one row and column of its place.
            for (ch, y, xx) in (0..c).flat_map(|ch| (0..h).flat_map(move |y| (0..w).map(move |xx| (ch, y, xx)))) {
                let v = x[(ch * h + y) * w + xx];
                let near = |dy: isize, dx: isize| {
                    let (sy, sx) = (y as isize + dy, xx as isize + dx);
                    (0..h as isize).contains(&sy)
                        && (0..w as isize).contains(&sx)
                        && pixels[(ch * h) * w + (sy as usize) * w + sx as usize] == v
                };
                assert!(v == 0.0 || (-1..=1).any(|dy| (-1..=1).any(|dx| near(dy, dx))), "{v} at {ch},{y},{xx}");
            }
        }
    }
}
