//! What one-shot pruning knows of a layer's inputs: the calibration samples run through the
//! model up to the layer (in the engine, with the layers before it already pruned), and the
//! Hessian `X^T X / n` of the rows a weight matrix multiplies (a convolution's im2col patches).

use anyhow::Context;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use engine::graph::{Graph, Window};

/// The calibration samples (`n x per-sample input`, normalized) as they reach the input of node
/// `k` of `graph`: run through the nodes before it. Returns the values, sample-major.
pub fn layer_input(graph: &Graph, k: usize, samples: &[f32], n: usize, threads: usize) -> anyhow::Result<Vec<f32>> {
    let value = &graph.nodes[k].inputs[0];
    if *value == graph.input {
        return Ok(samples.to_vec());
    }
    let head = Graph { output: value.clone(), nodes: graph.nodes[..k].to_vec(), ports: None, ..graph.clone() };
    let model = compile::compile(head, Options::new(KernelPolicy::Dense)?)
        .with_context(|| format!("running the calibration data up to layer '{}'", graph.nodes[k].name))?;
    let mut session = Session::new(&model, threads)?;
    let per_sample = samples.len() / n.max(1);
    let mut out = Vec::new();
    for chunk in samples.chunks(256 * per_sample.max(1)) {
        out.extend(session.run(chunk, chunk.len() / per_sample.max(1))?);
    }
    Ok(out)
}

/// `X^T X / rows` of `rows` vectors of `cols` values, accumulated in f64 (the upper triangle,
/// then mirrored).
fn gram(vectors: impl Iterator<Item = Vec<f32>>, cols: usize) -> Vec<f64> {
    let mut h = vec![0.0f64; cols * cols];
    let mut rows = 0usize;
    for x in vectors {
        rows += 1;
        for i in 0..cols {
            let xi = x[i] as f64;
            if xi == 0.0 {
                continue;
            }
            let row = &mut h[i * cols..(i + 1) * cols];
            for j in i..cols {
                row[j] += xi * x[j] as f64;
            }
        }
    }
    for i in 0..cols {
        for j in i..cols {
            let v = h[i * cols + j] / rows.max(1) as f64;
            h[i * cols + j] = v;
            h[j * cols + i] = v;
        }
    }
    h
}

/// The Hessian of a linear layer's inputs: `x` holds `n` rows of `cols`.
pub fn linear(x: &[f32], cols: usize) -> Vec<f64> {
    gram(x.chunks(cols).map(<[f32]>::to_vec), cols)
}

/// The Hessian of a convolution's im2col patches: `x` holds `n` samples of `[channels, h, w]`;
/// a patch lists its values channel by channel, then kernel row and column, as the weight
/// `[out, channels, kh, kw]` reads them.
pub fn conv(x: &[f32], [channels, h, w]: [usize; 3], window: &Window) -> Vec<f64> {
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [dh, dw] = window.dilation;
    let [top, left, bottom, right] = window.pads;
    let oh = (h + top + bottom - dh * (kh - 1) - 1) / sh + 1;
    let ow = (w + left + right - dw * (kw - 1) - 1) / sw + 1;
    let cols = channels * kh * kw;
    let sample = channels * h * w;
    let patches = x.chunks(sample).flat_map(move |img| {
        (0..oh * ow).map(move |pos| {
            let (oy, ox) = (pos / ow, pos % ow);
            let mut patch = vec![0.0f32; cols];
            for c in 0..channels {
                for ki in 0..kh {
                    let y = (oy * sh + ki * dh) as isize - top as isize;
                    for kj in 0..kw {
                        let xx = (ox * sw + kj * dw) as isize - left as isize;
                        if y >= 0 && (y as usize) < h && xx >= 0 && (xx as usize) < w {
                            patch[(c * kh + ki) * kw + kj] = img[(c * h + y as usize) * w + xx as usize];
                        }
                    }
                }
            }
            patch
        })
    });
    gram(patches, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pointwise_convolution_has_its_pixels_hessian() {
        // 1x1 kernel, stride 1: the patches are the pixels' channel vectors.
        let window = Window { kernel: [1, 1], stride: [1, 1], pads: [0; 4], dilation: [1, 1], ceil_mode: false };
        let x: Vec<f32> = (0..2 * 3 * 2 * 2).map(|i| i as f32 * 0.5 - 3.0).collect();
        let pixels: Vec<f32> = x.chunks(12).flat_map(|img| (0..4).flat_map(move |p| (0..3).map(move |c| img[c * 4 + p]))).collect();
        assert_eq!(conv(&x, [3, 2, 2], &window), linear(&pixels, 3));
    }

    #[test]
    fn padded_patches_read_zeros_outside_the_image() {
        // One 1x1 image of value 2, a 3x3 kernel with padding 1: one patch, 2 at its centre.
        let window = Window { kernel: [3, 3], stride: [1, 1], pads: [1; 4], dilation: [1, 1], ceil_mode: false };
        let h = conv(&[2.0], [1, 1, 1], &window);
        assert_eq!(h.len(), 81);
        assert_eq!(h[4 * 9 + 4], 4.0);
        assert_eq!(h.iter().filter(|v| **v != 0.0).count(), 1);
    }
}
