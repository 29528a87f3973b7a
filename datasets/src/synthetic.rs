//! A seeded synthetic image dataset that a small network learns in seconds, for fast tests of
//! training, pruning and export. Each class is a fixed random pattern of bright squares; each
//! image is its class pattern, randomly shifted by up to one pixel, plus noise.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::split::{Dataset, Normalization, Pixels, Source, Split};

/// Builds `train` and `test` images of `side x side` pixels in `classes` classes from `seed`.
pub fn synthetic(train: usize, test: usize, classes: usize, side: usize, seed: u64) -> Dataset {
    let mut rng = StdRng::seed_from_u64(seed);
    let patterns: Vec<Vec<f32>> = (0..classes).map(|_| pattern(side, &mut rng)).collect();
    let mut make = |n: usize| {
        let mut pixels = Vec::with_capacity(n * side * side);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % classes;
            let (dy, dx) = (rng.random_range(-1i32..=1), rng.random_range(-1i32..=1));
            for y in 0..side as i32 {
                for x in 0..side as i32 {
                    let (sy, sx) = (y - dy, x - dx);
                    let base = if (0..side as i32).contains(&sy) && (0..side as i32).contains(&sx) {
                        patterns[class][sy as usize * side + sx as usize]
                    } else {
                        0.0
                    };
                    let v = base + rng.random_range(-40.0..40.0f32);
                    pixels.push(v.clamp(0.0, 255.0) as u8);
                }
            }
            labels.push(class as u8);
        }
        Split { channels: 1, rows: side, cols: side, pixels: Pixels::Bytes(pixels), labels }
    };
    let train = make(train);
    let test = make(test);
    let norm = Normalization::uniform(0.2, 0.35, 1);
    Dataset { name: "synthetic".into(), source: Source::Embedded, num_classes: classes, norm, train, test }
}

fn pattern(side: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut p = vec![0.0; side * side];
    let block = (side / 7).max(1);
    for _ in 0..6 {
        let (y0, x0) = (rng.random_range(0..side - block + 1), rng.random_range(0..side - block + 1));
        for y in y0..y0 + block {
            for x in x0..x0 + block {
                p[y * side + x] = 220.0;
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeded_and_balanced() {
        let a = super::synthetic(100, 20, 10, 28, 5);
        let b = super::synthetic(100, 20, 10, 28, 5);
        assert_eq!(a.train, b.train);
        assert_ne!(a.train, super::synthetic(100, 20, 10, 28, 6).train);
        assert_eq!(a.train.histogram(10), vec![10; 10]);
        assert_eq!(a.test.pixels.len(), 20 * 784);
    }
}
