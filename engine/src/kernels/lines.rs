//! Float buffers that start on a cache line. A 64-byte vector load from an address that is not a
//! multiple of 64 reads two lines; the CSR kernel, one such load per multiply-add, ran at about
//! half its rate on a 16-byte-aligned input (`Vec<f32>` from the allocator) in a tile that fits
//! L1 (`cargo run --release -p engine --example spmm_roofline`).

use std::ops::{Deref, DerefMut};

/// Floats to skip from the start of `v` to reach a 64-byte boundary (0 to 15).
pub fn line_offset(v: &[f32]) -> usize {
    (64 - v.as_ptr() as usize % 64) % 64 / 4
}

/// `len` floats starting on a cache line, kept inside a slightly longer vector.
pub struct LineAligned {
    storage: Vec<f32>,
    start: usize,
    len: usize,
}

impl LineAligned {
    pub fn zeroed(len: usize) -> LineAligned {
        let storage = vec![0.0f32; len + 16];
        let start = line_offset(&storage);
        LineAligned { storage, start, len }
    }

    /// Element `i` is `f(i)`.
    pub fn from_fn(len: usize, f: impl Fn(usize) -> f32) -> LineAligned {
        let mut v = LineAligned::zeroed(len);
        v.iter_mut().enumerate().for_each(|(i, x)| *x = f(i));
        v
    }
}

impl Deref for LineAligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for LineAligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_line_with_the_asked_length() {
        for len in [0, 1, 17, 1000] {
            let v = LineAligned::from_fn(len, |i| i as f32);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % 64, 0);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as f32));
        }
    }
}
