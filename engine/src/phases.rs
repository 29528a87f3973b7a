//! A strided convolution as a stride-1 one on the input's phases: with stride `s`, the input
//! image splits into `s x s` phase images (rows `s m + r`, columns `s n + c`), and the
//! convolution becomes a stride-1 convolution over them with a kernel of about `k / s` taps a
//! side. The direct kernels, which run stride 1 straight from the image, then take strided layers
//! too; the weights keep their non-zeros (each moves to its phase's channel), so the work is the
//! same and only the input is copied once, rearranged (no im2col).

use crate::graph::{Weight, Window};

/// A strided convolution rewritten over phase images.
pub struct PhaseConv {
    /// For each element of the per-sample phase image `[phases * C, H / s, W / s]`, the input
    /// element it copies.
    pub sources: Vec<u32>,
    pub phase_shape: Vec<usize>,
    /// `[out, phases * C, kh', kw']`.
    pub weight: Weight,
    /// Stride 1.
    pub window: Window,
}

/// Per axis: the offset (in phase rows) and phase of each tap `a` of a kernel of `k` with
/// `begin` padding at stride `s`, the rewritten kernel size and its begin padding.
fn taps(k: usize, begin: usize, s: usize) -> (Vec<(usize, usize)>, usize, usize) {
    let split = |a: usize| {
        let t = a as i64 - begin as i64;
        (t.div_euclid(s as i64), t.rem_euclid(s as i64) as usize)
    };
    let lowest = split(0).0;
    let highest = split(k - 1).0;
    let taps = (0..k).map(|a| ((split(a).0 - lowest) as usize, split(a).1)).collect();
    (taps, (highest - lowest + 1) as usize, (-lowest) as usize)
}

/// The rewrite of a convolution of `weight` with `window` on a per-sample input `[C, H, W]` giving
/// `[out, oh, ow]`, where it applies: a stride above 1 (the same on both axes), no dilation, and
/// `H`, `W` multiples of the stride. Without a quantized weight.
pub fn rewrite(weight: &Weight, window: &Window, input: &[usize], output: &[usize]) -> Option<PhaseConv> {
    let s = window.stride[0];
    let &[c, h, w] = input else { return None };
    let fits = s > 1
        && window.stride == [s, s]
        && window.dilation == [1, 1]
        && !window.ceil_mode
        && h.is_multiple_of(s)
        && w.is_multiple_of(s)
        && weight.shape.len() == 4;
    if !fits {
        return None;
    }
    let (hp, wp) = (h / s, w / s);
    let (rows, kh, top) = taps(window.kernel[0], window.pads[0], s);
    let (cols, kw, left) = taps(window.kernel[1], window.pads[1], s);
    // Bottom and right padding that keep the output size; a negative one would crop: not rewritten.
    let bottom = (output[1] + kh).checked_sub(1 + hp + top)?;
    let right = (output[2] + kw).checked_sub(1 + wp + left)?;
    let mut phases: Vec<(usize, usize)> = Vec::new();
    for &(_, r) in &rows {
        for &(_, q) in &cols {
            if !phases.contains(&(r, q)) {
                phases.push((r, q));
            }
        }
    }
    phases.sort_unstable();
    let out = weight.shape[0];
    let (ka, kb) = (window.kernel[0], window.kernel[1]);
    // Real layers grow by at most 16/9 (3x3/2); a window built to grow more is left as written,
    // so the rewrite never multiplies a file's weights (up to `MAX_WEIGHT_ELEMENTS`) by much.
    if phases.len() * kh * kw > 2 * ka * kb {
        return None;
    }
    let mut data = vec![0.0; out * phases.len() * c * kh * kw];
    for o in 0..out {
        for ci in 0..c {
            for (a, &(da, r)) in rows.iter().enumerate() {
                for (b, &(db, q)) in cols.iter().enumerate() {
                    let p = phases.iter().position(|&ph| ph == (r, q)).expect("listed");
                    let to = ((o * phases.len() + p) * c + ci) * kh * kw + da * kw + db;
                    data[to] = weight.data[((o * c + ci) * ka + a) * kb + b];
                }
            }
        }
    }
    let mut sources = Vec::with_capacity(phases.len() * c * hp * wp);
    for &(r, q) in &phases {
        for ci in 0..c {
            for m in 0..hp {
                for n in 0..wp {
                    sources.push((ci * h * w + (s * m + r) * w + s * n + q) as u32);
                }
            }
        }
    }
    Some(PhaseConv {
        sources,
        phase_shape: vec![phases.len() * c, hp, wp],
        // Int8 weights keep their per-output-channel scales: the values only move.
        weight: Weight { shape: vec![out, phases.len() * c, kh, kw], data, quant: weight.quant.clone() },
        window: Window { kernel: [kh, kw], stride: [1, 1], pads: [top, left, bottom, right], dilation: [1, 1], ceil_mode: false },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain strided convolution, one sample.
    fn conv(x: &[f32], [c, h, w]: [usize; 3], weight: &Weight, window: &Window) -> Vec<f32> {
        let (oh, ow) = window.output(h, w, "").unwrap();
        let out = weight.shape[0];
        let (kh, kw) = (window.kernel[0], window.kernel[1]);
        let mut y = vec![0.0; out * oh * ow];
        for o in 0..out {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = 0.0;
                    for ci in 0..c {
                        for a in 0..kh {
                            for b in 0..kw {
                                let r = (i * window.stride[0] + a) as i64 - window.pads[0] as i64;
                                let q = (j * window.stride[1] + b) as i64 - window.pads[1] as i64;
                                if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                                    acc += weight.data[((o * c + ci) * kh + a) * kw + b] * x[(ci * h + r as usize) * w + q as usize];
                                }
                            }
                        }
                    }
                    y[(o * oh + i) * ow + j] = acc;
                }
            }
        }
        y
    }

    #[test]
    fn phase_convolutions_equal_the_strided_ones() {
        // 3x3/2 pad 1 (ResNet, YOLO), 1x1/2 (a projection shortcut), 6x6/2 pad 2 (YOLOv5's stem),
        // 7x7/2 pad 3 (ResNet's stem), 3x3/2 without padding, 4x4/4.
        for (k, s, p) in [(3, 2, 1), (1, 2, 0), (6, 2, 2), (7, 2, 3), (3, 2, 0), (4, 4, 0)] {
            let (c, h, w, out) = (3, 8, 12, 2);
            let window = Window::square(k, s, p);
            let values = |n: usize, seed: usize| (0..n).map(|i| ((i * 7919 + seed) % 23) as f32 - 11.0).collect::<Vec<f32>>();
            let weight = Weight::dense(vec![out, c, k, k], values(out * c * k * k, 5));
            let x = values(c * h * w, 1);
            let (oh, ow) = window.output(h, w, "").unwrap();
            let Some(r) = rewrite(&weight, &window, &[c, h, w], &[out, oh, ow]) else {
                panic!("{k}x{k}/{s} pad {p} is rewritten");
            };
            let phased: Vec<f32> = r.sources.iter().map(|&i| x[i as usize]).collect();
            let [pc, ph, pw] = r.phase_shape[..] else { unreachable!() };
            assert_eq!(r.window.output(ph, pw, "").unwrap(), (oh, ow), "{k}x{k}/{s} pad {p}: output size");
            assert_eq!(conv(&phased, [pc, ph, pw], &r.weight, &r.window), conv(&x, [c, h, w], &weight, &window), "{k}x{k}/{s} pad {p}");
            let nonzeros = |w: &Weight| w.data.iter().filter(|&&v| v != 0.0).count();
            assert_eq!(nonzeros(&r.weight), nonzeros(&weight), "the same non-zeros");
        }
        let odd = Window::square(3, 2, 1);
        assert!(rewrite(&Weight::dense(vec![1, 1, 3, 3], vec![1.0; 9]), &odd, &[1, 7, 8], &[1, 4, 4]).is_none(), "odd height");
    }
}
