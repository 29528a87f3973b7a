//! BatchNorm on a batch's own statistics, on plain NCHW `f32` slices, the batch split over the
//! team's threads: the per-channel mean and (biased) variance, the normalisation, and its
//! backward pass (the input's, scale's and shift's gradients). Each has a scalar twin in the tests.

/// The layout of a BatchNorm's input: `[batch, channels, pixels]` with `pixels = h * w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub channels: usize,
    pub pixels: usize,
}

impl Dims {
    fn sample(&self) -> usize {
        self.channels * self.pixels
    }

    /// Values each channel's statistics run over.
    fn count(&self) -> f32 {
        (self.batch * self.pixels) as f32
    }

    /// Samples per parallel task.
    fn chunk(&self) -> usize {
        self.batch.div_ceil(super::threads()).max(1) * self.sample()
    }
}

/// Per-channel sums of `f(channel, a, b)` over the batch, for two activations `a` and `b` of the
/// same layout, in a fixed order for a given number of threads (partial sums per task, added in
/// task order).
fn channel_sums(d: &Dims, a: &[f32], b: &[f32], f: impl Fn(usize, f32, f32) -> f32 + Sync) -> Vec<f32> {
    let partials = super::map(a.chunks(d.chunk()).zip(b.chunks(d.chunk())), |(a, b)| {
        let mut sums = vec![0.0f32; d.channels];
        for (i, (a, b)) in a.chunks(d.pixels).zip(b.chunks(d.pixels)).enumerate() {
            sums[i % d.channels] += a.iter().zip(b).map(|(&a, &b)| f(i % d.channels, a, b)).sum::<f32>();
        }
        sums
    });
    partials.into_iter().fold(vec![0.0; d.channels], |mut total, p| {
        total.iter_mut().zip(p).for_each(|(t, v)| *t += v);
        total
    })
}

/// Each channel's mean and biased variance over the batch and pixels (two passes).
pub fn statistics(d: &Dims, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = d.count();
    let mean: Vec<f32> = channel_sums(d, x, x, |_, v, _| v).into_iter().map(|s| s / n).collect();
    let var = channel_sums(d, x, x, |c, v, _| (v - mean[c]) * (v - mean[c])).into_iter().map(|s| s / n).collect();
    (mean, var)
}

/// `1 / sqrt(var + eps)` per channel.
fn inverse_std(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect()
}

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta`, per channel.
pub fn forward(d: &Dims, x: &[f32], gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> Vec<f32> {
    let inv = inverse_std(var, eps);
    let scale: Vec<f32> = gamma.iter().zip(&inv).map(|(g, i)| g * i).collect();
    let shift: Vec<f32> = beta.iter().zip(mean.iter().zip(&scale)).map(|(b, (m, s))| b - m * s).collect();
    let mut y = super::zeros(x.len());
    super::for_each(y.chunks_mut(d.chunk()).zip(x.chunks(d.chunk())), |(ys, xs)| {
        for (i, (y, x)) in ys.chunks_mut(d.pixels).zip(xs.chunks(d.pixels)).enumerate() {
            let c = i % d.channels;
            y.iter_mut().zip(x).for_each(|(y, x)| *y = x * scale[c] + shift[c]);
        }
    });
    y
}

/// The gradients of the loss with respect to `x`, `gamma` and `beta`, given its gradient `dy`
/// with respect to `forward`'s output (the statistics being those of `x`): with
/// `xhat = (x - mean) * inv`, `dbeta = sum(dy)`, `dgamma = sum(dy * xhat)` and
/// `dx = gamma * inv * (dy - (dbeta + xhat * dgamma) / n)` per channel.
pub fn backward(d: &Dims, x: &[f32], dy: &[f32], gamma: &[f32], mean: &[f32], var: &[f32], eps: f32) -> [Vec<f32>; 3] {
    let inv = inverse_std(var, eps);
    let n = d.count();
    let dbeta = channel_sums(d, dy, dy, |_, g, _| g);
    let centred = channel_sums(d, x, dy, |c, x, g| (x - mean[c]) * g);
    let dgamma: Vec<f32> = centred.iter().zip(&inv).map(|(s, i)| s * i).collect();
    let mut dx = super::zeros(x.len());
    super::for_each(dx.chunks_mut(d.chunk()).zip(x.chunks(d.chunk()).zip(dy.chunks(d.chunk()))), |(dxs, (xs, dys))| {
        for (i, (dx, (x, dy))) in dxs.chunks_mut(d.pixels).zip(xs.chunks(d.pixels).zip(dys.chunks(d.pixels))).enumerate() {
            let c = i % d.channels;
            let (k, b, a) = (gamma[c] * inv[c], dbeta[c] / n, dgamma[c] * inv[c] / n);
            dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(dx, (x, g))| *dx = k * (g - b - (x - mean[c]) * a));
        }
    });
    [dx, dgamma, dbeta]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| scale * (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0) + seed as f32).collect()
    }

    /// Statistics, output and gradients by their definitions in f64, one element at a time.
    #[test]
    fn kernels_match_their_definitions() {
        for d in [
            Dims { batch: 5, channels: 3, pixels: 7 },
            Dims { batch: 1, channels: 2, pixels: 1 },
            Dims { batch: 9, channels: 1, pixels: 16 },
        ] {
            let eps = 1e-5;
            let (x, dy) = (values(d.batch * d.sample(), 2, 3.0), values(d.batch * d.sample(), 1, 0.5));
            let (gamma, beta) = (values(d.channels, 3, 0.2), values(d.channels, 0, 1.0));
            let at = |b: usize, c: usize, p: usize| (b * d.channels + c) * d.pixels + p;
            let n = d.count() as f64;
            let mut want_mean = vec![0.0f64; d.channels];
            let mut want_var = vec![0.0f64; d.channels];
            for c in 0..d.channels {
                let all: Vec<usize> = (0..d.batch).flat_map(|b| (0..d.pixels).map(move |p| at(b, c, p))).collect();
                want_mean[c] = all.iter().map(|&i| x[i] as f64).sum::<f64>() / n;
                want_var[c] = all.iter().map(|&i| (x[i] as f64 - want_mean[c]).powi(2)).sum::<f64>() / n;
            }
            let (mean, var) = statistics(&d, &x);
            let close =
                |a: f32, b: f64, what: &str| assert!((a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{d:?} {what}: {a} against {b}");
            (0..d.channels).for_each(|c| close(mean[c], want_mean[c], "mean"));
            (0..d.channels).for_each(|c| close(var[c], want_var[c], "variance"));
            let y = forward(&d, &x, &gamma, &beta, &mean, &var, eps);
            let [dx, dgamma, dbeta] = backward(&d, &x, &dy, &gamma, &mean, &var, eps);
            for c in 0..d.channels {
                let inv = 1.0 / (want_var[c] + eps as f64).sqrt();
                let all: Vec<usize> = (0..d.batch).flat_map(|b| (0..d.pixels).map(move |p| at(b, c, p))).collect();
                let xhat = |i: usize| (x[i] as f64 - want_mean[c]) * inv;
                let sum_dy: f64 = all.iter().map(|&i| dy[i] as f64).sum();
                let sum_dy_xhat: f64 = all.iter().map(|&i| dy[i] as f64 * xhat(i)).sum();
                close(dbeta[c], sum_dy, "dbeta");
                close(dgamma[c], sum_dy_xhat, "dgamma");
                for &i in &all {
                    close(y[i], xhat(i) * gamma[c] as f64 + beta[c] as f64, "y");
                    close(dx[i], gamma[c] as f64 * inv * (dy[i] as f64 - sum_dy / n - xhat(i) * sum_dy_xhat / n), "dx");
                }
            }
        }
    }
}
