//! Kernels of the sequence operators (BERT): embedding lookups, layer normalization, softmax over
//! the last axis, products of two activations, and `Where`. Values are feature-major over a tile
//! of `w` samples: element `e` of sample `s` is at `e * w + s`. Plain loops, compiled for AVX-512
//! and AVX2 too (`on_isa`), where the compiler vectorizes them.

use super::Isa;

/// `f()` compiled for `isa`: `f`'s loops (inlined into it) vectorize 16 or 8 lanes wide.
fn on_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
    match isa {
        // SAFETY: `isa` is at most what the CPU supports (`Isa::detect`, `kernels::isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(f) },
        _ => f(),
    }
}

/// The row of `table` (`rows x width`) that an index value picks: negative values count from
/// the end (as ONNX Gather); anything else outside the table (callers refuse such inputs, see
/// `Session`) is clamped, so no read leaves the table.
fn table_row(v: f32, rows: usize) -> usize {
    let r = if v < 0.0 { v + rows as f32 } else { v };
    (r.max(0.0) as usize).min(rows - 1)
}

/// `y[i, d] = table[x[i], d]` for each index element `i` of the tile.
pub fn embed(table: &[f32], width: usize, x: &[f32], w: usize, y: &mut [f32]) {
    let rows = table.len() / width.max(1);
    for (i, indices) in x.chunks_exact(w).enumerate() {
        let out = &mut y[i * width * w..(i + 1) * width * w];
        for (s, &v) in indices.iter().enumerate() {
            let row = &table[table_row(v, rows) * width..][..width];
            if w == 1 {
                out.copy_from_slice(row);
            } else {
                row.iter().enumerate().for_each(|(d, &t)| out[d * w + s] = t);
            }
        }
    }
}

/// Each sample's groups of `len` consecutive elements (the last axis) normalized, scaled and shifted.
pub fn layer_norm(isa: Isa, x: &[f32], scale: &[f32], bias: &[f32], epsilon: f32, w: usize, y: &mut [f32]) {
    let len = scale.len();
    let mut row = vec![0.0f32; if w == 1 { 0 } else { len }];
    on_isa(
        isa,
        #[inline(always)]
        || {
            for (xg, yg) in x.chunks_exact(len * w).zip(y.chunks_exact_mut(len * w)) {
                for s in 0..w {
                    let row: &[f32] = if w == 1 {
                        xg
                    } else {
                        row.iter_mut().enumerate().for_each(|(d, r)| *r = xg[d * w + s]);
                        &row
                    };
                    let mean = lanes(row, 0.0, add, add) / len as f32;
                    let var = lanes(row, 0.0, |s, v| s + (v - mean) * (v - mean), add) / len as f32;
                    let inv = 1.0 / (var + epsilon).sqrt();
                    if w == 1 {
                        for ((o, &v), (&k, &b)) in yg.iter_mut().zip(row).zip(scale.iter().zip(bias)) {
                            *o = (v - mean) * inv * k + b;
                        }
                    } else {
                        for d in 0..len {
                            yg[d * w + s] = (row[d] - mean) * inv * scale[d] + bias[d];
                        }
                    }
                }
            }
        },
    )
}

/// Layer normalization down the columns of `x`, a `[len, cols]` matrix (`len = scale.len()` of
/// `column_normalize`; a features-first value, each column one position of one sample), columns
/// `range` of it: each column's mean and `1 / sqrt(variance + epsilon)` into `mean` and `inv`
/// (indexed from `range.start`). Two passes over the rows, as `layer_norm` makes over a row.
pub fn column_stats(
    isa: Isa,
    x: &[f32],
    len: usize,
    cols: usize,
    range: std::ops::Range<usize>,
    epsilon: f32,
    mean: &mut [f32],
    inv: &mut [f32],
) {
    on_isa(
        isa,
        #[inline(always)]
        || {
            let rows = || x.chunks_exact(cols.max(1)).take(len).map(|row| &row[range.clone()]);
            let (mean, inv) = (&mut mean[..range.len()], &mut inv[..range.len()]);
            mean.fill(0.0);
            for row in rows() {
                mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m /= len as f32);
            inv.fill(0.0);
            for row in rows() {
                inv.iter_mut().zip(row).zip(&*mean).for_each(|((s, &v), &m)| *s += (v - m) * (v - m));
            }
            inv.iter_mut().for_each(|s| *s = 1.0 / (*s / len as f32 + epsilon).sqrt());
        },
    )
}

/// Rows of `y = (x - mean) * inv * scale[row] + bias[row]` for `x`'s rows of `cols` values, the
/// columns' `mean` and `inv` from `column_stats`; `scale` and `bias` start at `x`'s first row.
/// (Each thread writing its own columns of every row instead ran BERT-base's layer norms a
/// quarter slower than rows split between threads.)
pub fn column_normalize(isa: Isa, x: &[f32], cols: usize, mean: &[f32], inv: &[f32], scale: &[f32], bias: &[f32], y: &mut [f32]) {
    on_isa(
        isa,
        #[inline(always)]
        || {
            for (((xr, yr), &k), &b) in x.chunks_exact(cols.max(1)).zip(y.chunks_exact_mut(cols.max(1))).zip(scale).zip(bias) {
                for (((o, &v), &m), &i) in yr.iter_mut().zip(xr).zip(mean).zip(inv) {
                    *o = (v - m) * i * k + b;
                }
            }
        },
    )
}

/// Softmax over each sample's groups of `len` consecutive elements; with a `mask` (a multiple of
/// `len` elements a sample, `x` starting at its first) added first, repeating over `x`; with
/// `zero_nan`, NaN results (a group of -inf) as 0.
pub fn softmax(isa: Isa, x: &[f32], mask: Option<&[f32]>, len: usize, w: usize, zero_nan: bool, y: &mut [f32]) {
    if mask.is_none() && !zero_nan {
        return plain_softmax(isa, x, len, w, y);
    }
    let groups_per_mask = mask.map_or(1, |m| (m.len() / (len * w).max(1)).max(1));
    on_isa(
        isa,
        #[inline(always)]
        || {
            for (g, (xg, yg)) in x.chunks_exact(len * w).zip(y.chunks_exact_mut(len * w)).enumerate() {
                let mask = mask.map(|m| &m[g % groups_per_mask * len * w..][..len * w]);
                if w == 1 {
                    if let Some(m) = mask {
                        yg.iter_mut().zip(xg).zip(m).for_each(|((o, &v), &k)| *o = v + k);
                        let max = lanes(yg, f32::MIN, larger, larger);
                        yg.iter_mut().for_each(|o| *o = super::elementwise::exp(*o - max));
                    } else {
                        let max = lanes(xg, f32::MIN, larger, larger);
                        yg.iter_mut().zip(xg).for_each(|(o, &v)| *o = super::elementwise::exp(v - max));
                    }
                    let inv = 1.0 / lanes(yg, 0.0, add, add);
                    yg.iter_mut().for_each(|o| *o *= inv);
                } else {
                    let at = |i: usize| mask.map_or(xg[i], |m| xg[i] + m[i]);
                    for s in 0..w {
                        let max = (0..len).map(|d| at(d * w + s)).fold(f32::MIN, |m, v| if v > m { v } else { m });
                        let mut sum = 0.0;
                        for d in 0..len {
                            let e = super::elementwise::exp(at(d * w + s) - max);
                            yg[d * w + s] = e;
                            sum += e;
                        }
                        let inv = 1.0 / sum;
                        (0..len).for_each(|d| yg[d * w + s] *= inv);
                    }
                }
                if zero_nan {
                    yg.iter_mut().for_each(|o| *o = if o.is_nan() { 0.0 } else { *o });
                }
            }
        },
    )
}

/// `softmax` without a mask or NaN replacement, its own loops (a classifier's softmax of ten
/// values is a quarter of LeNet-300-100's batch-1 run).
fn plain_softmax(isa: Isa, x: &[f32], len: usize, w: usize, y: &mut [f32]) {
    on_isa(
        isa,
        #[inline(always)]
        || {
            for (xg, yg) in x.chunks_exact(len * w).zip(y.chunks_exact_mut(len * w)) {
                if w == 1 {
                    let max = lanes(xg, f32::MIN, larger, larger);
                    yg.iter_mut().zip(xg).for_each(|(o, &v)| *o = super::elementwise::exp(v - max));
                    let inv = 1.0 / lanes(yg, 0.0, add, add);
                    yg.iter_mut().for_each(|o| *o *= inv);
                    continue;
                }
                for s in 0..w {
                    let max = (0..len).map(|d| xg[d * w + s]).fold(f32::MIN, |m, v| if v > m { v } else { m });
                    let mut sum = 0.0;
                    for d in 0..len {
                        let e = super::elementwise::exp(xg[d * w + s] - max);
                        yg[d * w + s] = e;
                        sum += e;
                    }
                    let inv = 1.0 / sum;
                    (0..len).for_each(|d| yg[d * w + s] *= inv);
                }
            }
        },
    )
}

/// `v` folded by `step` from `init` in 16 lanes (element `i` into lane `i % 16`), the lanes then
/// joined in order by `join`: a chain of dependent steps one vector wide, where one lane's chain
/// made BERT-base's softmax over rows of 128 take 0.31 ms a layer (a maximum by comparisons, not
/// `f32::max`, so the loop vectorizes).
#[inline(always)]
fn lanes(v: &[f32], init: f32, step: impl Fn(f32, f32) -> f32, join: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        acc.iter_mut().zip(c).for_each(|(a, &x)| *a = step(*a, x));
    }
    acc.iter_mut().zip(chunks.remainder()).for_each(|(a, &x)| *a = step(*a, x));
    acc.into_iter().fold(init, join)
}

fn larger(m: f32, v: f32) -> f32 {
    if v > m { v } else { m }
}

fn add(s: f32, v: f32) -> f32 {
    s + v
}

/// The shapes of one product: `[m, k] x [k, n]`, and which of its matrices are stored with their
/// two axes swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub swapped: Swapped,
}

/// Which matrices of a product are stored with their two axes swapped: `a` as `[k, m]`, `b` as
/// `[n, k]`, the output as `[n, m]`. Attention reads its heads from features-first values and
/// writes them back that way, so its transposes run as strides of the product, not as copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swapped {
    pub a: bool,
    pub b: bool,
    pub y: bool,
}

/// Row and column strides, in elements, of a `rows x cols` matrix stored as it is or swapped.
fn strides(rows: usize, cols: usize, swapped: bool) -> (usize, usize) {
    if swapped { (1, rows) } else { (cols, 1) }
}

/// `y = a x b` for consecutive slices of the tile, `y` holding their `m x n` elements in turn:
/// slice `i` reads `a` from element `slices[i].0` and `b` from `slices[i].1`.
pub fn matmul_slices(isa: Isa, p: Product, a: &[f32], b: &[f32], slices: &[(usize, usize)], w: usize, y: &mut [f32]) {
    on_isa(
        isa,
        #[inline(always)]
        || {
            for (y, &(at_a, at_b)) in y.chunks_mut(p.m * p.n * w).zip(slices) {
                matmul_slice(p, a, at_a, b, at_b, w, y);
            }
        },
    )
}

/// One slice of `matmul_slices`. One sample's product runs in the `gemm` crate's kernels: on
/// BERT-base's attention products (2 threads, `engine analyze`) 0.13-0.16 ms each, against
/// 0.54 for blocks of 4 x 16 outputs in registers (plain loops the compiler vectorized).
#[inline(always)]
fn matmul_slice(p: Product, a: &[f32], a_at: usize, b: &[f32], b_at: usize, w: usize, y: &mut [f32]) {
    let Product { m, k, n, swapped } = p;
    let (sa, sb, sy) = (strides(m, k, swapped.a), strides(k, n, swapped.b), strides(m, n, swapped.y));
    if w == 1 {
        let (a, b) = (&a[a_at..a_at + m * k], &b[b_at..b_at + k * n]);
        return super::dense::matmul_strided([m, k, n], (a, sa), (b, sb), (&mut y[..m * n], sy));
    }
    y[..m * n * w].fill(0.0);
    for i in 0..m {
        for kk in 0..k {
            let a_row = &a[(a_at + i * sa.0 + kk * sa.1) * w..][..w];
            for j in 0..n {
                let (o, bj) = (i * sy.0 + j * sy.1, b_at + kk * sb.0 + j * sb.1);
                let (o, bj) = (&mut y[o * w..(o + 1) * w], &b[bj * w..(bj + 1) * w]);
                o.iter_mut().zip(bj).zip(a_row).for_each(|((o, &bv), &av)| *o += av * bv);
            }
        }
    }
}

/// One operand of `select`: a tile value or a constant, with its broadcast strides.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Tile(&'a [f32]),
    Constant(&'a [f32]),
}

impl Source<'_> {
    #[inline]
    fn at(&self, element: usize, s: usize, w: usize) -> f32 {
        match self {
            Source::Tile(v) => v[element * w + s],
            Source::Constant(c) => c[element],
        }
    }
}

/// Whether `select` on these operands is one flat loop over the elements (a whole condition, each
/// value whole or a single constant), so that any range of them can run on its own: element
/// range `r` of the output is `select` over `[r.len()]` of each operand's `part(r)`.
pub fn is_flat(shape: &[usize], operands: &[(Source, &[usize]); 3]) -> bool {
    let whole = super::elementwise::broadcast_strides(shape, shape.len());
    let flat = |(source, strides): &(Source, &[usize])| match source {
        Source::Tile(_) => *strides == &whole[..],
        Source::Constant(c) => c.len() == 1 && strides.iter().all(|&s| s == 0),
    };
    matches!(operands[0].0, Source::Tile(_)) && operands.iter().all(flat)
}

impl<'a> Source<'a> {
    /// Elements `range` of a flat operand of `w` samples (`is_flat`), with its strides over them.
    pub fn part(self, range: std::ops::Range<usize>, w: usize) -> (Source<'a>, &'static [usize]) {
        match self {
            Source::Tile(v) => (Source::Tile(&v[range.start * w..range.end * w]), &[1]),
            constant => (constant, &[0]),
        }
    }
}

/// `y = cond != 0 ? on : off` over the output `shape`, each operand read through its broadcast
/// strides (`elementwise::broadcast_strides`).
pub fn select(shape: &[usize], operands: [(Source, &[usize]); 3], w: usize, y: &mut [f32]) {
    let numel: usize = shape.iter().product();
    // A flat select (NaNs to zero after a softmax, a mask to scores): one loop, specialized per
    // case so that it vectorizes.
    if let (Source::Tile(cond), true) = (operands[0].0, is_flat(shape, &operands)) {
        let n = numel * w;
        let (cond, y) = (&cond[..n], &mut y[..n]);
        let pick = |c: f32, a: f32, b: f32| if c != 0.0 { a } else { b };
        match (operands[1].0, operands[2].0) {
            (Source::Constant(a), Source::Constant(b)) => y.iter_mut().zip(cond).for_each(|(o, &c)| *o = pick(c, a[0], b[0])),
            (Source::Constant(a), Source::Tile(v)) => y.iter_mut().zip(cond).zip(&v[..n]).for_each(|((o, &c), &v)| *o = pick(c, a[0], v)),
            (Source::Tile(v), Source::Constant(b)) => y.iter_mut().zip(cond).zip(&v[..n]).for_each(|((o, &c), &v)| *o = pick(c, v, b[0])),
            (Source::Tile(a), Source::Tile(b)) => {
                y.iter_mut().zip(cond).zip(a[..n].iter().zip(&b[..n])).for_each(|((o, &c), (&a, &b))| *o = pick(c, a, b))
            }
        }
        return;
    }
    let mut index = vec![0usize; shape.len()];
    let mut at = [0usize; 3];
    for o in 0..numel {
        for s in 0..w {
            let cond = operands[0].0.at(at[0], s, w);
            let pick = if cond != 0.0 { 1 } else { 2 };
            y[o * w + s] = operands[pick].0.at(at[pick], s, w);
        }
        // Next index, last axis fastest; the operands' offsets follow.
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            for (a, (_, strides)) in at.iter_mut().zip(&operands) {
                *a += strides[d];
            }
            if index[d] < shape[d] {
                break;
            }
            for (a, (_, strides)) in at.iter_mut().zip(&operands) {
                *a -= strides[d] * shape[d];
            }
            index[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask and NaN flags give the bytes of the three passes they replace (an addition of the
    /// mask repeated over the groups, the softmax, NaN to 0), a group of -inf scores and masked
    /// scores included, on one sample and a tile of three.
    #[test]
    fn masked_softmax_is_the_addition_then_the_softmax() {
        let (len, groups, repeat) = (17, 6, 3);
        for w in [1, 3] {
            let mut x: Vec<f32> = (0..len * groups * w).map(|i| ((i * 7919) % 29) as f32 * 0.3 - 4.0).collect();
            x[..len * w].fill(f32::NEG_INFINITY);
            let mask: Vec<f32> = (0..len * repeat * w).map(|i| if i % 5 == 0 { f32::MIN } else { (i % 3) as f32 }).collect();
            for isa in Isa::available() {
                let mut fused = vec![f32::NAN; x.len()];
                softmax(isa, &x, Some(&mask), len, w, true, &mut fused);
                let added: Vec<f32> = x.iter().enumerate().map(|(i, &v)| v + mask[i % mask.len()]).collect();
                let mut want = vec![f32::NAN; x.len()];
                softmax(isa, &added, None, len, w, false, &mut want);
                want.iter_mut().filter(|v| v.is_nan()).for_each(|v| *v = 0.0);
                assert_eq!(fused, want, "w {w} {isa:?}");
            }
        }
    }

    /// Down the columns of a `[len, cols]` matrix, in two column ranges and two row parts as
    /// the executor splits it: `layer_norm` over each column copied out as a row.
    #[test]
    fn column_layer_norm_matches_the_rows_form() {
        for (len, cols) in [(1, 1), (3, 17), (768, 5), (16, 128)] {
            let x: Vec<f32> = (0..len * cols).map(|i| ((i * 7919) % 23) as f32 * 0.37 - 4.0).collect();
            let scale: Vec<f32> = (0..len).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
            let bias: Vec<f32> = (0..len).map(|i| (i % 3) as f32 * 0.2 - 0.2).collect();
            for isa in Isa::available() {
                let (mut mean, mut inv) = (vec![f32::NAN; cols], vec![f32::NAN; cols]);
                let half = cols / 2;
                column_stats(isa, &x, len, cols, 0..half, 1e-5, &mut mean, &mut inv);
                column_stats(isa, &x, len, cols, half..cols, 1e-5, &mut mean[half..], &mut inv[half..]);
                let mut y = vec![f32::NAN; len * cols];
                let top = len / 2 * cols;
                column_normalize(isa, &x[..top], cols, &mean, &inv, &scale, &bias, &mut y[..top]);
                column_normalize(isa, &x[top..], cols, &mean, &inv, &scale[len / 2..], &bias[len / 2..], &mut y[top..]);
                for c in 0..cols {
                    let column: Vec<f32> = (0..len).map(|r| x[r * cols + c]).collect();
                    let mut want = vec![0.0; len];
                    layer_norm(Isa::Scalar, &column, &scale, &bias, 1e-5, 1, &mut want);
                    for r in 0..len {
                        let got = y[r * cols + c];
                        assert!(
                            (got - want[r]).abs() <= 1e-4 * (1.0 + want[r].abs()),
                            "{len}x{cols} ({r}, {c}) {isa:?}: {got} vs {}",
                            want[r]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn one_sample_products_match_the_plain_sums_on_edge_shapes() {
        for (m, k, n) in [(1, 1, 1), (4, 3, 16), (5, 7, 17), (9, 64, 33), (8, 2, 128), (3, 5, 4)] {
            let p = Product { m, k, n, swapped: Swapped::default() };
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 37) % 11) as f32 * 0.25 - 1.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 53) % 13) as f32 * 0.5 - 3.0).collect();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; m * n];
                matmul_slices(isa, p, &a, &b, &[(0, 0)], 1, &mut y);
                for i in 0..m {
                    for j in 0..n {
                        let want = (0..k).fold(0.0f32, |s, kk| s + a[i * k + kk] * b[kk * n + j]);
                        assert_eq!(y[i * n + j], want, "{m}x{k}x{n} at ({i}, {j}) on {isa:?}");
                    }
                }
            }
        }
    }

    /// Every combination of swapped operands and output, one sample and a tile of three: the
    /// plain sums over the matrices as stored.
    #[test]
    fn swapped_products_match_the_plain_sums() {
        let (m, k, n) = (5, 7, 17);
        for bits in 0..8 {
            let swapped = Swapped { a: bits & 1 != 0, b: bits & 2 != 0, y: bits & 4 != 0 };
            let p = Product { m, k, n, swapped };
            let at = |rows: usize, cols: usize, swap: bool, r: usize, c: usize| if swap { c * rows + r } else { r * cols + c };
            for w in [1, 3] {
                let a: Vec<f32> = (0..m * k * w).map(|i| ((i * 37) % 11) as f32 * 0.25 - 1.0).collect();
                let b: Vec<f32> = (0..k * n * w).map(|i| ((i * 53) % 13) as f32 * 0.5 - 3.0).collect();
                let mut y = vec![f32::NAN; m * n * w];
                matmul_slices(Isa::detect(), p, &a, &b, &[(0, 0)], w, &mut y);
                for (i, j, s) in (0..m).flat_map(|i| (0..n).flat_map(move |j| (0..w).map(move |s| (i, j, s)))) {
                    let want =
                        (0..k).fold(0.0f32, |acc, kk| acc + a[at(m, k, swapped.a, i, kk) * w + s] * b[at(k, n, swapped.b, kk, j) * w + s]);
                    assert_eq!(y[at(m, n, swapped.y, i, j) * w + s], want, "{swapped:?} w {w} at ({i}, {j}, {s})");
                }
            }
        }
    }

    #[test]
    fn products_of_a_tile_match_one_sample_at_a_time() {
        let p = Product { m: 3, k: 5, n: 4, swapped: Swapped::default() };
        let w = 3;
        let a: Vec<f32> = (0..p.m * p.k * w).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..p.k * p.n * w).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut y = vec![0.0; p.m * p.n * w];
        matmul_slices(Isa::detect(), p, &a, &b, &[(0, 0)], w, &mut y);
        for s in 0..w {
            let one = |v: &[f32]| v.iter().skip(s).step_by(w).copied().collect::<Vec<f32>>();
            let (a1, b1) = (one(&a), one(&b));
            let mut y1 = vec![0.0; p.m * p.n];
            matmul_slices(Isa::detect(), p, &a1, &b1, &[(0, 0)], 1, &mut y1);
            for i in 0..p.m {
                for j in 0..p.n {
                    let want: f32 = (0..p.k).map(|kk| a1[i * p.k + kk] * b1[kk * p.n + j]).sum();
                    assert_eq!(y1[i * p.n + j], want);
                    assert_eq!(y[(i * p.n + j) * w + s], want);
                }
            }
        }
    }

    /// A flat select run in parts of its elements (as the executor splits it over threads)
    /// writes what the whole does; a broadcast operand is not flat.
    #[test]
    fn flat_selects_run_in_parts_as_a_whole() {
        let (shape, w) = ([3usize, 7], 2);
        let n = 21 * w;
        let cond: Vec<f32> = (0..n).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let v: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let whole = crate::kernels::elementwise::broadcast_strides(&shape, 2);
        let operands = [(Source::Tile(&cond), &whole[..]), (Source::Constant(&[-1.0]), &[0, 0][..]), (Source::Tile(&v), &whole[..])];
        assert!(is_flat(&shape, &operands));
        let mut want = vec![0.0; n];
        select(&shape, operands, w, &mut want);
        for part in [1, 4, 21] {
            let mut got = vec![f32::NAN; n];
            for (k, y) in got.chunks_mut(part * w).enumerate() {
                let range = k * part..(k * part + y.len() / w).min(21);
                let [a, b, c] = operands.map(|(source, _)| source.part(range.clone(), w));
                select(&[range.len()], [a, b, c], w, y);
            }
            assert_eq!(got, want, "parts of {part}");
        }
        let row = crate::kernels::elementwise::broadcast_strides(&[1, 7], 2);
        assert!(!is_flat(&shape, &[(Source::Tile(&cond), &whole[..]), (Source::Tile(&v), &row[..]), operands[2]]));
    }

    #[test]
    fn select_broadcasts_each_operand() {
        // cond [2, 1] against on [3] (constant) and off [2, 3] (tile of 2 samples).
        let cond = [1.0, 0.0, 0.0, 1.0]; // rows of 2 samples: cond[0] = (1, 0), cond[1] = (0, 1)
        let on = [7.0, 8.0, 9.0];
        let off: Vec<f32> = (0..12).map(|i| -(i as f32)).collect();
        let mut y = vec![0.0; 12];
        let shape = [2, 3];
        select(&shape, [(Source::Tile(&cond), &[1, 0]), (Source::Constant(&on), &[0, 1]), (Source::Tile(&off), &[3, 1])], 2, &mut y);
        for (e, s) in (0..6).flat_map(|e| (0..2).map(move |s| (e, s))) {
            let (i, j) = (e / 3, e % 3);
            let want = if cond[i * 2 + s] != 0.0 { on[j] } else { off[e * 2 + s] };
            assert_eq!(y[e * 2 + s], want, "element {e} sample {s}");
        }
    }

    #[test]
    fn select_on_whole_values_matches_the_element_rule() {
        // Whole condition and values or scalar constants, 2 samples: the flat loops.
        let (shape, w) = ([2, 3], 2);
        let cond: Vec<f32> = (0..12).map(|i| (i % 3 == 0) as u8 as f32).collect();
        let v: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let (whole, none) = ([3usize, 1], [0usize, 0]);
        let cases: [[(Source, &[usize]); 3]; 3] = [
            [(Source::Tile(&cond), &whole), (Source::Constant(&[5.0]), &none), (Source::Tile(&v), &whole)],
            [(Source::Tile(&cond), &whole), (Source::Tile(&v), &whole), (Source::Constant(&[-1.0]), &none)],
            [(Source::Tile(&cond), &whole), (Source::Constant(&[5.0]), &none), (Source::Constant(&[-1.0]), &none)],
        ];
        for operands in cases {
            let mut y = vec![0.0; 12];
            select(&shape, operands, w, &mut y);
            for k in 0..12 {
                let (e, s) = (k / w, k % w);
                let value = |src: Source| match src {
                    Source::Tile(t) => t[e * w + s],
                    Source::Constant(c) => c[0],
                };
                let want = if cond[k] != 0.0 { value(operands[1].0) } else { value(operands[2].0) };
                assert_eq!(y[k], want, "element {k}");
            }
        }
    }

    #[test]
    fn embedding_rows_are_clamped_inside_the_table() {
        let table: Vec<f32> = (0..6).map(|v| v as f32).collect(); // 3 rows of 2
        let mut y = vec![0.0; 8];
        embed(&table, 2, &[1.0, -1.0, 9.0, 0.0], 1, &mut y);
        assert_eq!(y, [2.0, 3.0, 4.0, 5.0, 4.0, 5.0, 0.0, 1.0]);
    }
}
