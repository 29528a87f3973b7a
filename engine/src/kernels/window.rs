//! Window operators on feature-major image tiles: im2col for convolutions (which then run through
//! the same dense and sparse kernels as linear layers), max and average pooling.
//!
//! An image tile of `w` samples with `c` channels of `h x wd` pixels is `[c, h, wd, w]`: the
//! sample index is innermost, so every inner loop runs over contiguous samples.

use crate::graph::Window;

/// Geometry of one windowed operator on a tile.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub channels: usize,
    pub in_hw: [usize; 2],
    pub out_hw: [usize; 2],
    pub window: Window,
    /// Samples in the tile.
    pub w: usize,
}

impl Geometry {
    /// For each output coordinate and kernel offset along one axis, the input coordinate, if it is
    /// inside the image (not padding).
    fn source(&self, axis: usize, out: usize, k: usize) -> Option<usize> {
        let pos = out * self.window.stride[axis] + k * self.window.dilation[axis];
        pos.checked_sub(self.window.pads[axis]).filter(|&p| p < self.in_hw[axis])
    }
}

/// Unfolds `x` `[c, h, wd, w]` into `cols` `[c * kh * kw, oh, ow, w]` (zeros where the window
/// covers padding), so a convolution is `[out, c * kh * kw] x cols`.
pub fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    let [kh, kw] = g.window.kernel;
    let [oh, ow] = g.out_hw;
    let [h, wd] = g.in_hw;
    let w = g.w;
    let plane = oh * ow * w;
    assert!(x.len() >= g.channels * h * wd * w && cols.len() >= g.channels * kh * kw * plane, "im2col sizes");
    for c in 0..g.channels {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = ((c * kh + ky) * kw + kx) * plane;
                for oy in 0..oh {
                    for ox in 0..ow {
                        let dst = &mut cols[row + (oy * ow + ox) * w..][..w];
                        match (g.source(0, oy, ky), g.source(1, ox, kx)) {
                            (Some(iy), Some(ix)) => dst.copy_from_slice(&x[((c * h + iy) * wd + ix) * w..][..w]),
                            _ => dst.fill(0.0),
                        }
                    }
                }
            }
        }
    }
}

/// Max (`avg = None`) or average pooling (`avg = Some(count_include_pad)`) of `x` into `y`
/// `[c, oh, ow, w]`.
pub fn pool(g: &Geometry, x: &[f32], y: &mut [f32], avg: Option<bool>) {
    let [kh, kw] = g.window.kernel;
    let [oh, ow] = g.out_hw;
    let [h, wd] = g.in_hw;
    let w = g.w;
    assert!(x.len() >= g.channels * h * wd * w && y.len() >= g.channels * oh * ow * w, "pool sizes");
    for c in 0..g.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let out = &mut y[((c * oh + oy) * ow + ox) * w..][..w];
                out.fill(if avg.is_some() { 0.0 } else { f32::NEG_INFINITY });
                let mut count = 0usize;
                for ky in 0..kh {
                    for kx in 0..kw {
                        let (Some(iy), Some(ix)) = (g.source(0, oy, ky), g.source(1, ox, kx)) else { continue };
                        count += 1;
                        let src = &x[((c * h + iy) * wd + ix) * w..][..w];
                        if avg.is_some() {
                            out.iter_mut().zip(src).for_each(|(o, s)| *o += s);
                        } else {
                            out.iter_mut().zip(src).for_each(|(o, s)| *o = o.max(*s));
                        }
                    }
                }
                if let Some(include_pad) = avg {
                    let n = if include_pad { kh * kw } else { count.max(1) };
                    out.iter_mut().for_each(|o| *o /= n as f32);
                }
            }
        }
    }
}
