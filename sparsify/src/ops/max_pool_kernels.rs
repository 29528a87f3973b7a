//! Max pooling without padding on plain NCHW `f32` slices, planes in parallel: the maxima with
//! the index of each (the first of equal values, as PyTorch picks), and the backward pass that
//! sends each output's gradient to that index.

/// A pooling's sizes: `planes` (batch times channels) of `height x width`, square windows of
/// `kernel` at `stride`, each inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub planes: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl Pool {
    pub fn out_h(&self) -> usize {
        (self.height - self.kernel) / self.stride + 1
    }

    pub fn out_w(&self) -> usize {
        (self.width - self.kernel) / self.stride + 1
    }

    fn plane(&self) -> usize {
        self.height * self.width
    }

    fn out_plane(&self) -> usize {
        self.out_h() * self.out_w()
    }
}

/// The maximum of each window and its index within the plane.
pub fn forward(p: &Pool, x: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (mut y, mut at) = (vec![0.0; p.planes * p.out_plane()], vec![0u32; p.planes * p.out_plane()]);
    let per = p.planes.div_ceil(super::threads()).max(1);
    let tasks = y.chunks_mut(per * p.out_plane()).zip(at.chunks_mut(per * p.out_plane())).zip(x.chunks(per * p.plane()));
    super::for_each(tasks, |((ys, ats), xs)| {
        for ((y, at), x) in ys.chunks_mut(p.out_plane()).zip(ats.chunks_mut(p.out_plane())).zip(xs.chunks(p.plane())) {
            plane_maxima(p, x, y, at);
        }
    });
    (y, at)
}

/// One plane's maxima and their indices.
fn plane_maxima(p: &Pool, x: &[f32], y: &mut [f32], at: &mut [u32]) {
    for oy in 0..p.out_h() {
        for ox in 0..p.out_w() {
            let (mut best, mut index) = (f32::NEG_INFINITY, (oy * p.stride) * p.width + ox * p.stride);
            for i in 0..p.kernel {
                let row = (oy * p.stride + i) * p.width + ox * p.stride;
                for (j, &v) in x[row..row + p.kernel].iter().enumerate() {
                    if v > best {
                        (best, index) = (v, row + j);
                    }
                }
            }
            y[oy * p.out_w() + ox] = x[index];
            at[oy * p.out_w() + ox] = index as u32;
        }
    }
}

/// The input's gradient: each output's gradient added at its maximum's index.
pub fn backward(p: &Pool, at: &[u32], dy: &[f32]) -> Vec<f32> {
    let mut dx = super::zeros(p.planes * p.plane());
    let per = p.planes.div_ceil(super::threads()).max(1);
    let tasks = dx.chunks_mut(per * p.plane()).zip(at.chunks(per * p.out_plane()).zip(dy.chunks(per * p.out_plane())));
    super::for_each(tasks, |(dxs, (ats, dys))| {
        for (dx, (at, dy)) in dxs.chunks_mut(p.plane()).zip(ats.chunks(p.out_plane()).zip(dys.chunks(p.out_plane()))) {
            for (&i, &g) in at.iter().zip(dy) {
                dx[i as usize] += g;
            }
        }
    });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxima_and_gradients_by_definition() {
        for p in [
            Pool { planes: 3, height: 6, width: 8, kernel: 2, stride: 2 },
            Pool { planes: 2, height: 7, width: 7, kernel: 3, stride: 2 },
            Pool { planes: 1, height: 5, width: 4, kernel: 2, stride: 1 },
        ] {
            let x: Vec<f32> = (0..p.planes * p.plane()).map(|i| ((i * 7919) % 101) as f32).collect();
            let dy: Vec<f32> = (0..p.planes * p.out_plane()).map(|i| i as f32 + 1.0).collect();
            let (y, at) = forward(&p, &x);
            let dx = backward(&p, &at, &dy);
            let mut want_dx = vec![0.0; x.len()];
            for plane in 0..p.planes {
                for oy in 0..p.out_h() {
                    for ox in 0..p.out_w() {
                        let window =
                            (0..p.kernel).flat_map(|i| (0..p.kernel).map(move |j| (oy * p.stride + i) * p.width + ox * p.stride + j));
                        // The first index holding the window's maximum, in row-major order.
                        let best = window.fold(None, |best: Option<usize>, k| match best {
                            Some(b) if x[plane * p.plane() + b] >= x[plane * p.plane() + k] => Some(b),
                            _ => Some(k),
                        });
                        let o = plane * p.out_plane() + oy * p.out_w() + ox;
                        assert_eq!(at[o] as usize, best.unwrap(), "{p:?}");
                        assert_eq!(y[o], x[plane * p.plane() + best.unwrap()]);
                        want_dx[plane * p.plane() + best.unwrap()] += dy[o];
                    }
                }
            }
            assert_eq!(dx, want_dx, "{p:?}");
        }
    }
}
