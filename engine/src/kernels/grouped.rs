//! Grouped and depth-wise convolutions on feature-major image tiles (`[c, h, wd, w]`), without
//! im2col: for each output row and each weight, the input row is added in (one `axpy` over the
//! output columns inside the image, contiguous at stride 1). Output channel `o` reads the input
//! channels of group `o / (out / groups)`; zero weights are skipped.

use std::ops::Range;

use super::window::Geometry;

/// Output channels `channels` of a grouped convolution into `y` (those channels only, as
/// `[channels.len(), oh, ow, w]`); `weight` is `[out, in / groups, kh, kw]`.
pub fn group_conv(g: &Geometry, groups: usize, weight: &[f32], bias: &[f32], x: &[f32], y: &mut [f32], channels: Range<usize>, relu: bool) {
    let ([kh, kw], [oh, ow], [h, wd], w) = (g.window.kernel, g.out_hw, g.in_hw, g.w);
    let out = bias.len();
    let (per_group_in, per_group_out) = (g.channels / groups.max(1), out / groups.max(1));
    assert!(
        groups > 0 && g.channels.is_multiple_of(groups) && out.is_multiple_of(groups) && channels.end <= out,
        "groups do not divide the channels"
    );
    assert!(weight.len() == out * per_group_in * kh * kw, "weights do not match the geometry");
    assert!(g.holds_input(x.len()) && g.holds_output(y.len(), channels.len()), "input or output tile too small");
    let inside: Vec<(Range<usize>, usize)> = (0..kw).map(|kx| g.inside(1, kx)).collect();
    let stride = g.window.stride[1];
    // One sample at a stride above 1: each input row of a group's channels split into its
    // `stride` phases (`phases`), so that every tap reads a contiguous run, which vectorizes;
    // on output rows shorter than a vector the split costs more than it saves (MobileNetV2's
    // 14x14 and 7x7 stride-2 layers, measured), and each tap gathers its pixels instead.
    let phased = stride > 1 && w == 1 && ow >= 16;
    let phase_len = wd.div_ceil(stride);
    let mut phases = vec![0.0f32; if phased { per_group_in * h * stride * phase_len } else { 0 }];
    let mut phases_of = usize::MAX;
    for (i, o) in channels.enumerate() {
        let group = o / per_group_out;
        if phased && phases_of != group {
            for (ci, plane) in phases.chunks_exact_mut(h * stride * phase_len).enumerate() {
                let c = group * per_group_in + ci;
                for (row, split) in x[c * h * wd..(c + 1) * h * wd].chunks_exact(wd).zip(plane.chunks_exact_mut(stride * phase_len)) {
                    for (p, phase) in split.chunks_exact_mut(phase_len).enumerate() {
                        phase.iter_mut().zip(row[p..].iter().step_by(stride)).for_each(|(d, s)| *d = *s);
                    }
                }
            }
            phases_of = group;
        }
        for oy in 0..oh {
            let row = &mut y[(i * oh + oy) * ow * w..][..ow * w];
            row.fill(bias[o]);
            for ci in 0..per_group_in {
                let c = group * per_group_in + ci;
                for ky in 0..kh {
                    let Some(iy) = g.source(0, oy, ky) else { continue };
                    let src = &x[(c * h + iy) * wd * w..][..wd * w];
                    for (kx, (valid, ix0)) in inside.iter().enumerate() {
                        let wv = weight[((o * per_group_in + ci) * kh + ky) * kw + kx];
                        if wv == 0.0 || valid.is_empty() {
                            continue;
                        }
                        if stride == 1 {
                            let n = valid.len() * w;
                            row[valid.start * w..][..n].iter_mut().zip(&src[ix0 * w..][..n]).for_each(|(r, s)| *r += wv * s);
                        } else if phased {
                            // Input columns ix0, ix0 + stride, ...: phase ix0 % stride from ix0 / stride.
                            let at = ((ci * h + iy) * stride + ix0 % stride) * phase_len + ix0 / stride;
                            let dst = &mut row[valid.clone()];
                            dst.iter_mut().zip(&phases[at..at + valid.len()]).for_each(|(r, s)| *r += wv * s);
                        } else if w == 1 {
                            let dst = &mut row[valid.clone()];
                            dst.iter_mut().zip(src[*ix0..].iter().step_by(stride)).for_each(|(r, s)| *r += wv * s);
                        } else {
                            for (k, ox) in valid.clone().enumerate() {
                                let s = &src[(ix0 + k * stride) * w..][..w];
                                row[ox * w..][..w].iter_mut().zip(s).for_each(|(r, s)| *r += wv * s);
                            }
                        }
                    }
                }
            }
            if relu {
                row.iter_mut().for_each(|v| *v = super::elementwise::relu(*v));
            }
        }
    }
}
