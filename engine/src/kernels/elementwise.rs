//! Element-wise kernels on feature-major tiles (`[features, w]`): one-value functions (clips,
//! sigmoid, GELU, ...), two-value operations with NumPy broadcasting over the per-sample shape,
//! and concatenation. Plain loops the compiler vectorizes; each is its own scalar reference.

use std::ops::Range;

use super::Isa;
use crate::graph::BinaryKind;
use crate::layout::Run;

/// `erf(x)` within 5e-7 (Numerical Recipes' `erfc` Chebyshev fit) in f32 arithmetic and this
/// module's `exp`, which vectorize: in f64 with the library's `exp` it took 3.6 ns a value, and
/// BERT-base's GELUs 1.4 ms a layer.
#[inline]
pub fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_2 + t * 0.170_872_77))))))));
    let erfc = t * exp(poly);
    if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}

/// `v` clamped to `[lo, hi]` by comparisons: they vectorize, where `f32::max` and `f32::min`
/// (NaN-aware) ran 5x slower on ReLU6 (0.30 against 0.06 ms on 301,000 values).
#[inline]
pub fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    if v < lo {
        lo
    } else if v > hi {
        hi
    } else {
        v
    }
}

/// 1 for true, 0 for false: how the engine holds booleans.
#[inline]
pub fn truth(b: bool) -> f32 {
    if b { 1.0 } else { 0.0 }
}

/// `max(v, 0)` by a comparison (see `clamp`).
#[inline]
pub fn relu(v: f32) -> f32 {
    if v > 0.0 { v } else { 0.0 }
}

/// `y = max(x, 0)`.
pub fn relu_tile(x: &[f32], y: &mut [f32]) {
    y.iter_mut().zip(x).for_each(|(o, &i)| *o = relu(i));
}

/// `y = a + b`, with ReLU where `with_relu` (residual connections): one loop per case, so that
/// each vectorizes.
pub fn add(a: &[f32], b: &[f32], y: &mut [f32], with_relu: bool) {
    let pairs = y.iter_mut().zip(a.iter().zip(b));
    if with_relu {
        pairs.for_each(|(o, (&p, &q))| *o = relu(p + q));
    } else {
        pairs.for_each(|(o, (&p, &q))| *o = p + q);
    }
}

/// `y = y + r`, with ReLU where `with_relu`, then the fake quantization where given: the residual
/// connection of a layer whose kernel did not add it itself (`MatMul::residual`), bit for bit
/// `add_fake_quantized` (block by block through L1).
pub fn add_in_place(isa: Isa, y: &mut [f32], r: &[f32], with_relu: bool, fake_quant: Option<(f32, u8)>) {
    let mut buf = [0.0f32; 256];
    for (y, r) in y.chunks_mut(256).zip(r.chunks(256)) {
        buf[..y.len()].copy_from_slice(y);
        add_fake_quantized(isa, &buf[..y.len()], r, y, with_relu, fake_quant);
    }
}

/// `add`, then where `fake_quant` is given the QuantizeLinear / DequantizeLinear pair `(scale,
/// zero)` that followed the addition (fused into it): with AVX-512 in one pass, 16 values at a
/// time (the plain loop compiles for the crate's SSE2 baseline), else block by block in L1.
pub fn add_fake_quantized(isa: Isa, a: &[f32], b: &[f32], y: &mut [f32], with_relu: bool, fake_quant: Option<(f32, u8)>) {
    let n = a.len().min(b.len()).min(y.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F is present when `isa` is Avx512.
        return unsafe { add_avx512(&a[..n], &b[..n], &mut y[..n], with_relu, fake_quant) };
    }
    let Some((scale, zero)) = fake_quant else { return add(a, b, y, with_relu) };
    for ((y, a), b) in y[..n].chunks_mut(BLOCK).zip(a.chunks(BLOCK)).zip(b.chunks(BLOCK)) {
        add(a, b, y, with_relu);
        quantize_dequantize_in_place(isa, y, scale, zero);
    }
}

/// `add_fake_quantized` on slices of one length, 16 values at a time, the last ones masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn add_avx512(a: &[f32], b: &[f32], y: &mut [f32], with_relu: bool, fake_quant: Option<(f32, u8)>) {
    use std::arch::x86_64::*;
    assert!(a.len() == y.len() && b.len() == y.len(), "add of unequal slices");
    for at in (0..y.len()).step_by(16) {
        let left = y.len() - at;
        let mask: __mmask16 = if left >= 16 { 0xffff } else { (1u16 << left) - 1 };
        // SAFETY: the masked lanes, at..at + min(16, left), lie in all three slices.
        unsafe {
            let mut v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, a.as_ptr().add(at)), _mm512_maskz_loadu_ps(mask, b.as_ptr().add(at)));
            if with_relu {
                v = _mm512_max_ps(v, _mm512_setzero_ps());
            }
            if let Some((scale, zero)) = fake_quant {
                v = super::q8::quantize_dequantize16(v, scale, zero);
            }
            _mm512_mask_storeu_ps(y.as_mut_ptr().add(at), mask, v);
        }
    }
}

/// `y = x * scale + shift` (one channel), with ReLU where `with_relu`.
pub fn affine(x: &[f32], scale: f32, shift: f32, y: &mut [f32], with_relu: bool) {
    let pairs = y.iter_mut().zip(x);
    if with_relu {
        pairs.for_each(|(o, &i)| *o = relu(i * scale + shift));
    } else {
        pairs.for_each(|(o, &i)| *o = i * scale + shift);
    }
}

/// `e^x` within 2e-7 relative over [-87, 88] (beyond, the bounds' values: about 1e-38 for any
/// smaller `x`, as a softmax's masked scores of -3.4e38 need) in plain arithmetic the compiler vectorizes (the
/// C library's `expf` is a call per element): `x = n ln 2 + f` with `ln 2` in two parts (Cody
/// and Waite), `2^n` built in the exponent bits, Cephes' polynomial for `e^f`.
#[inline]
pub fn exp(x: f32) -> f32 {
    // Rounded by adding and removing 1.5 * 2^23 (the default rounding mode, to nearest even):
    // `round_ties_even` is a library call per element without SSE4.1. The sum's low bits hold
    // `n` itself, which builds `2^n` with integer operations only (a float-to-int conversion
    // kept the loop from vectorizing).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.336_55, 88.722_83);
    let shifted = (x * std::f32::consts::LOG2_E).clamp(-126.0, 127.0) + ROUND;
    let n = shifted - ROUND;
    let f = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * f + 1.398_199_9e-3) * f + 8.333_452e-3) * f + 4.166_579_6e-2) * f + 0.166_666_65) * f + 0.5;
    (p * f * f + f + 1.0) * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

/// `1 / (1 + e^-x)`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `y = q8::quantize_dequantize(x)` over a tile (a QuantizeLinear / DequantizeLinear pair), the
/// loop compiled for `isa`: on the crate's SSE2 baseline each value's round-half-to-even was a
/// call into libm, 3 ns a value (ResNet-50's int8 file spent 40% of its time in these passes).
/// With AVX-512, blocks of the input go through `y` and are fake-quantized there, in L1.
pub fn quantize_dequantize(isa: Isa, x: &[f32], y: &mut [f32], scale: f32, zero: u8) {
    if isa != Isa::Avx512 {
        return each_value(isa, x, y, |v| super::q8::quantize_dequantize(v, scale, zero));
    }
    for (y, x) in y.chunks_mut(BLOCK).zip(x.chunks(BLOCK)) {
        y[..x.len()].copy_from_slice(x);
        quantize_dequantize_in_place(isa, &mut y[..x.len()], scale, zero);
    }
}

/// Values per block where a tile goes through two passes that should meet in L1.
const BLOCK: usize = 1024;

/// `y = q8::quantize_dequantize(y)`, bit for bit, at a multiplication per value with AVX-512
/// (`q8::quantize_dequantize16`) where the plain loop divides.
pub fn quantize_dequantize_in_place(isa: Isa, y: &mut [f32], scale: f32, zero: u8) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: AVX-512F is present when `isa` is Avx512.
        return unsafe { quantize_dequantize_avx512(y, scale, zero) };
    }
    y.iter_mut().for_each(|v| *v = super::q8::quantize_dequantize(*v, scale, zero));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn quantize_dequantize_avx512(y: &mut [f32], scale: f32, zero: u8) {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_storeu_ps};
    let mut vectors = y.chunks_exact_mut(16);
    for v in &mut vectors {
        // SAFETY: `v` holds 16 floats.
        unsafe { _mm512_storeu_ps(v.as_mut_ptr(), super::q8::quantize_dequantize16(_mm512_loadu_ps(v.as_ptr()), scale, zero)) };
    }
    vectors.into_remainder().iter_mut().for_each(|v| *v = super::q8::quantize_dequantize(*v, scale, zero));
}

/// `y[i] = f(x[i])`, the loop compiled for `isa`.
pub fn each_value(isa: Isa, x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
    #[inline(never)]
    fn plain(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
        y.iter_mut().zip(x).for_each(|(o, &i)| *o = f(i));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn avx512(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
        y.iter_mut().zip(x).for_each(|(o, &i)| *o = f(i));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn avx2(x: &[f32], y: &mut [f32], f: impl Fn(f32) -> f32) {
        y.iter_mut().zip(x).for_each(|(o, &i)| *o = f(i));
    }
    match isa {
        // SAFETY: `isa` is at most what the CPU supports (`Isa::detect`, `kernels::isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(x, y, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(x, y, f) },
        _ => plain(x, y, f),
    }
}

/// `y[i] = f(y[i])`, the loop compiled for `isa` (a fused function on a layer's output, where a
/// copy of each chunk through a buffer for `each_value` had cost a fifth of the pass).
pub fn each_value_in_place(isa: Isa, y: &mut [f32], f: impl Fn(f32) -> f32) {
    #[inline(never)]
    fn plain(y: &mut [f32], f: impl Fn(f32) -> f32) {
        y.iter_mut().for_each(|v| *v = f(*v));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn avx512(y: &mut [f32], f: impl Fn(f32) -> f32) {
        y.iter_mut().for_each(|v| *v = f(*v));
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn avx2(y: &mut [f32], f: impl Fn(f32) -> f32) {
        y.iter_mut().for_each(|v| *v = f(*v));
    }
    match isa {
        // SAFETY: `isa` is at most what the CPU supports (`Isa::detect`, `kernels::isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(y, f) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(y, f) },
        _ => plain(y, f),
    }
}

/// Feature strides of an input of per-sample `shape` broadcast to an output of rank `rank`
/// (aligned right; 0 along broadcast dimensions).
pub fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let mut strides = vec![0; rank];
    let mut step = 1;
    for (i, &d) in shape.iter().enumerate().rev() {
        let at = rank - shape.len() + i;
        strides[at] = if d == 1 { 0 } else { step };
        step *= d;
    }
    strides
}

/// The second operand of a `binary`: a value tile (`[features, w]`) or a constant (one number
/// per feature, the same for every sample).
#[derive(Clone, Copy)]
pub enum Operand<'a> {
    Tile(&'a [f32]),
    Constant(&'a [f32]),
}

/// `y = a op b` (or `b op a` with `swap`) on tiles of `w` samples, with output per-sample shape
/// `shape` and the operands' broadcast strides (`broadcast_strides`). The innermost dimensions
/// along which each operand is either contiguous or one repeated feature run as one stretch, so
/// a squeeze-and-excitation `[C, H, W] * [C, 1, 1]` is C stretches of H * W, not H * W * C steps.
pub fn binary(
    isa: Isa,
    kind: BinaryKind,
    shape: &[usize],
    a: &[f32],
    a_strides: &[usize],
    b: Operand,
    b_strides: &[usize],
    swap: bool,
    w: usize,
    y: &mut [f32],
    part: Range<usize>,
) {
    let args = Args { shape, a, a_strides, b, b_strides, w, part };
    kind.run(isa, args, y, swap);
}

/// How `binary` cuts its output: stretches of this many features (over which each operand is
/// contiguous or one repeated feature), and how many of them.
pub fn stretches(shape: &[usize], a_strides: &[usize], b_strides: &[usize]) -> (usize, usize) {
    let split = suffix(shape, a_strides).0.max(suffix(shape, b_strides).0);
    let run: usize = shape[split..].iter().product();
    (run, shape.iter().product::<usize>() / run.max(1))
}

/// `binary`'s operands and the stretches of the output to compute.
#[derive(Clone)]
pub struct Args<'a> {
    shape: &'a [usize],
    a: &'a [f32],
    a_strides: &'a [usize],
    b: Operand<'a>,
    b_strides: &'a [usize],
    w: usize,
    part: Range<usize>,
}

/// `binary_with`, compiled for `isa` (as `each_value`).
/// `y = op(a, b)` over `args`' stretches, the loops compiled for `isa`.
pub(crate) fn binary_on(isa: Isa, args: Args, y: &mut [f32], op: impl Fn(f32, f32) -> f32 + Copy) {
    #[inline(never)]
    fn plain(args: Args, y: &mut [f32], op: impl Fn(f32, f32) -> f32 + Copy) {
        binary_with(args, y, op)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn avx512(args: Args, y: &mut [f32], op: impl Fn(f32, f32) -> f32 + Copy) {
        binary_with(args, y, op)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn avx2(args: Args, y: &mut [f32], op: impl Fn(f32, f32) -> f32 + Copy) {
        binary_with(args, y, op)
    }
    match isa {
        // SAFETY: `isa` is at most what the CPU supports (`Isa::detect`, `kernels::isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(args, y, op) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(args, y, op) },
        _ => plain(args, y, op),
    }
}

#[inline(always)]
fn binary_with(args: Args, y: &mut [f32], op: impl Fn(f32, f32) -> f32 + Copy) {
    let Args { shape, a, a_strides, b, b_strides, w, part } = args;
    let features: usize = shape.iter().product();
    assert!(a_strides.len() == shape.len() && b_strides.len() == shape.len(), "binary sizes");
    // From the later of the two starts, each operand keeps its mode (contiguous or repeated).
    let (a_from, a_repeats) = suffix(shape, a_strides);
    let (b_from, b_repeats) = suffix(shape, b_strides);
    let split = a_from.max(b_from);
    let run: usize = shape[split..].iter().product();
    let outer = &shape[..split];
    assert!(part.end <= features / run.max(1) && y.len() >= part.len() * run * w, "binary sizes");
    // The odometer over the outer dimensions, at the part's first stretch.
    let mut index = vec![0usize; outer.len()];
    let (mut ia, mut ib, mut rest) = (0usize, 0usize, part.start);
    for d in (0..outer.len()).rev() {
        index[d] = rest % outer[d];
        rest /= outer[d];
        ia += index[d] * a_strides[d];
        ib += index[d] * b_strides[d];
    }
    for r in 0..part.len() {
        let out = &mut y[r * run * w..][..run * w];
        let xa = &a[ia * w..][..if a_repeats { w } else { run * w }];
        let xb = match b {
            Operand::Tile(b) => Stretch::Values(&b[ib * w..][..if b_repeats { w } else { run * w }], b_repeats),
            Operand::Constant(c) => Stretch::Numbers(&c[ib..ib + if b_repeats { 1 } else { run }]),
        };
        stretch(op, out, xa, a_repeats, xb, w);
        // The next stretch: advance the odometer over the outer dimensions.
        for d in (0..outer.len()).rev() {
            index[d] += 1;
            ia += a_strides[d];
            ib += b_strides[d];
            if index[d] < shape[d] {
                break;
            }
            ia -= a_strides[d] * shape[d];
            ib -= b_strides[d] * shape[d];
            index[d] = 0;
        }
    }
}

/// Where an operand's innermost stretch can start: the first dimension from which its strides
/// are the output's (contiguous; `false`) or all zero (one feature repeated; `true`), size-1
/// dimensions fitting either. Of the two, the earlier.
fn suffix(shape: &[usize], strides: &[usize]) -> (usize, bool) {
    let from =
        |fits: &dyn Fn(usize) -> bool| (0..=shape.len()).rev().take_while(|&d| d == shape.len() || fits(d)).last().unwrap_or(shape.len());
    let contiguous = from(&|d| shape[d] == 1 || strides[d] == shape[d + 1..].iter().product::<usize>());
    let repeated = from(&|d| shape[d] == 1 || strides[d] == 0);
    if repeated < contiguous { (repeated, true) } else { (contiguous, false) }
}

/// The second operand of one stretch: tile values (`w` of them repeated where `repeats`), or
/// constant numbers, one per feature (or one for all).
enum Stretch<'a> {
    Values(&'a [f32], bool),
    Numbers(&'a [f32]),
}

/// `out = a op b` over one stretch of `out.len() / w` features.
#[inline(always)]
fn stretch(op: impl Fn(f32, f32) -> f32, out: &mut [f32], a: &[f32], a_repeats: bool, b: Stretch, w: usize) {
    match b {
        // The common cases as flat loops over the whole stretch.
        Stretch::Values(b, false) if !a_repeats => out.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (&p, &q))| *o = op(p, q)),
        Stretch::Numbers([q]) if !a_repeats => out.iter_mut().zip(a).for_each(|(o, &p)| *o = op(p, *q)),
        Stretch::Values(b, true) if !a_repeats && w == 1 => out.iter_mut().zip(a).for_each(|(o, &p)| *o = op(p, b[0])),
        // One repeated feature on the left (a squeeze-and-excitation's `scale * x`).
        Stretch::Values(b, false) if a_repeats && w == 1 => out.iter_mut().zip(b).for_each(|(o, &q)| *o = op(a[0], q)),
        Stretch::Values(b, false) if a_repeats => {
            for (o, xb) in out.chunks_exact_mut(w).zip(b.chunks_exact(w)) {
                o.iter_mut().zip(a.iter().zip(xb)).for_each(|(o, (&p, &q))| *o = op(p, q));
            }
        }
        b => {
            for (f, o) in out.chunks_mut(w).enumerate() {
                let xa = if a_repeats { a } else { &a[f * w..][..w] };
                match b {
                    Stretch::Values(b, repeats) => {
                        let xb = if repeats { b } else { &b[f * w..][..w] };
                        o.iter_mut().zip(xa.iter().zip(xb)).for_each(|(o, (&p, &q))| *o = op(p, q));
                    }
                    Stretch::Numbers(c) => {
                        let q = if c.len() == 1 { c[0] } else { c[f] };
                        o.iter_mut().zip(xa).for_each(|(o, &p)| *o = op(p, q));
                    }
                }
            }
        }
    }
}

/// Joins `inputs` along a per-sample axis: `outer` is the product of the dimensions before it,
/// `blocks[i]` the features input `i` holds per outer index (its axis length times the
/// dimensions after it).
pub fn concat(inputs: &[&[f32]], outer: usize, blocks: &[usize], w: usize, y: &mut [f32]) {
    let total: usize = blocks.iter().sum();
    assert!(inputs.len() == blocks.len() && y.len() >= outer * total * w, "concat sizes");
    let mut at = 0;
    for o in 0..outer {
        for (x, &b) in inputs.iter().zip(blocks) {
            y[at..at + b * w].copy_from_slice(&x[o * b * w..][..b * w]);
            at += b * w;
        }
    }
}

/// Row `i` of `y` (one element of `w` samples) is row `sources[i]` of `x`.
pub fn gather_rows(sources: &[u32], x: &[f32], w: usize, y: &mut [f32]) {
    if w == 1 {
        // One sample: an indexed load per element, not a copy call.
        y.iter_mut().zip(sources).for_each(|(o, &s)| *o = x[s as usize]);
        return;
    }
    for (out, &s) in y.chunks_exact_mut(w).zip(sources) {
        out.copy_from_slice(&x[s as usize * w..][..w]);
    }
}

/// `y` made by `runs` (`layout::Run`) one after another: a copy where the step is 1, every
/// second element where it is 2 (a loop the compiler vectorizes with shuffles), else one element
/// at a time. The phase images of a strided convolution had been gathered element by element
/// through an index each (about 2 ns an element).
pub fn gather_runs(runs: &[Run], x: &[f32], y: &mut [f32]) {
    let mut at = 0;
    for r in runs.iter().filter(|r| r.len > 0) {
        let out = &mut y[at..at + r.len];
        at += r.len;
        let src = &x[r.from..=r.from + r.step * (r.len - 1)];
        match r.step {
            0 => out.fill(src[0]),
            1 => out.copy_from_slice(src),
            2 => {
                let (last, body) = out.split_last_mut().expect("a run of at least one");
                body.iter_mut().zip(src.chunks_exact(2)).for_each(|(o, pair)| *o = pair[0]);
                *last = src[src.len() - 1];
            }
            step => out.iter_mut().zip(src.iter().step_by(step)).for_each(|(o, &v)| *o = v),
        }
    }
}

/// A global average pool: `y[c, s]` is the mean over `pixels` of `x[c, p, s]` (`[channels,
/// pixels, w]` in, `[channels, w]` out), the loops compiled for `isa`. One sample's image is
/// summed in 64 interleaved partial sums, which vectorize; a sequential sum waits one add's
/// latency per value (EfficientNet-B0's first pool, 32 x 112 x 112 values: 0.165 ms).
pub fn channel_means(isa: Isa, x: &[f32], pixels: usize, w: usize, y: &mut [f32]) {
    #[inline(always)]
    fn means(x: &[f32], pixels: usize, w: usize, y: &mut [f32]) {
        let count = pixels as f32;
        if w == 1 {
            for (o, image) in y.iter_mut().zip(x.chunks_exact(pixels.max(1))) {
                let mut lanes = [0.0f32; 64];
                let mut chunks = image.chunks_exact(64);
                for chunk in &mut chunks {
                    lanes.iter_mut().zip(chunk).for_each(|(l, v)| *l += v);
                }
                lanes.iter_mut().zip(chunks.remainder()).for_each(|(l, v)| *l += v);
                *o = lanes.iter().sum::<f32>() / count;
            }
            return;
        }
        for (out, image) in y.chunks_exact_mut(w).zip(x.chunks_exact(pixels.max(1) * w)) {
            out.fill(0.0);
            for p in image.chunks_exact(w) {
                out.iter_mut().zip(p).for_each(|(o, i)| *o += i);
            }
            out.iter_mut().for_each(|o| *o /= count);
        }
    }
    #[inline(never)]
    fn plain(x: &[f32], pixels: usize, w: usize, y: &mut [f32]) {
        means(x, pixels, w, y)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline(never)]
    fn avx512(x: &[f32], pixels: usize, w: usize, y: &mut [f32]) {
        means(x, pixels, w, y)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    fn avx2(x: &[f32], pixels: usize, w: usize, y: &mut [f32]) {
        means(x, pixels, w, y)
    }
    match isa {
        // SAFETY: `isa` is at most what the CPU supports (`Isa::detect`, `kernels::isa`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512(x, pixels, w, y) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2(x, pixels, w, y) },
        _ => plain(x, pixels, w, y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `binary` over the whole output on every level this CPU has, in one part and in parts of
    /// one stretch each; all must agree (the result is left in `y`).
    fn whole(kind: BinaryKind, shape: &[usize], a: &[f32], sa: &[usize], b: Operand, sb: &[usize], swap: bool, w: usize, y: &mut [f32]) {
        let (run, count) = stretches(shape, sa, sb);
        let mut first: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            binary(isa, kind, shape, a, sa, b, sb, swap, w, y, 0..count);
            let mut parts = vec![0.0; y.len()];
            for (r, out) in parts.chunks_mut(run * w).enumerate().take(count) {
                binary(isa, kind, shape, a, sa, b, sb, swap, w, out, r..r + 1);
            }
            assert_eq!(parts[..count * run * w], y[..count * run * w], "{isa:?}: parts differ from the whole");
            match &first {
                Some(f) => assert_eq!(f[..], y[..], "{isa:?} differs from the scalar code"),
                None => first = Some(y.to_vec()),
            }
        }
    }

    /// Quantize-dequantize passes on every level this CPU has give the scalar definition's bits:
    /// halfway codes round to even, codes saturate at 0 and 255, a zero point shifts them.
    #[test]
    fn quantize_dequantize_passes_match_the_scalar_definition_bit_for_bit() {
        let scale = 0.05f32;
        let mut x: Vec<f32> = (-40..40).map(|i| i as f32 * 0.5 * scale).collect();
        x.extend([0.0, -0.0, 1e-30, -1e-30, 1e6, -1e6, 12.7, 12.8, 12.75, 0.025, 0.075, -0.025]);
        x.extend((0..37).map(|i| (i as f32 * 0.7311).sin() * 20.0));
        for zero in [0u8, 3, 128, 255] {
            let want: Vec<u32> = x.iter().map(|&v| crate::kernels::q8::quantize_dequantize(v, scale, zero).to_bits()).collect();
            for isa in Isa::available() {
                let mut y = vec![f32::NAN; x.len()];
                quantize_dequantize(isa, &x, &mut y, scale, zero);
                assert_eq!(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want, "{isa:?}, zero point {zero}");
            }
        }
        // Ties go to the even code: 0.5 and 1.5 steps become 0 and 2 steps.
        assert_eq!(crate::kernels::q8::quantize_dequantize(0.5 * scale, scale, 0), 0.0);
        assert_eq!(crate::kernels::q8::quantize_dequantize(1.5 * scale, scale, 0), 2.0 * scale);
    }

    /// Gathers by runs give the element-by-element gather's values: the phase images of 2x2 and
    /// 3x3 strides (rows of odd and even lengths), runs of step 1 and 0, and a map without runs.
    #[test]
    fn gathers_by_runs_equal_gathers_by_element() {
        let x: Vec<f32> = (0..4 * 21 * 21).map(|i| i as f32 * 0.5 - 7.0).collect();
        let phases = |s: usize, wd: usize| -> Vec<u32> {
            let (h, c) = (wd, 4);
            let mut out = Vec::new();
            for (r, q) in (0..s).flat_map(|r| (0..s).map(move |q| (r, q))) {
                for ch in 0..c {
                    for m in 0..h / s {
                        out.extend((0..wd / s).map(|n| ((ch * h + s * m + r) * wd + s * n + q) as u32));
                    }
                }
            }
            out
        };
        let copies: Vec<u32> = (0..5).flat_map(|k| (k * 40..k * 40 + 17).map(|i| i as u32)).collect();
        let repeats: Vec<u32> = (0..6).flat_map(|k| std::iter::repeat_n(k * 9 + 3, 8)).collect();
        let maps = [phases(2, 20), phases(2, 21), phases(3, 21), copies, repeats];
        for sources in maps {
            let runs = Run::of(&sources).expect("runs");
            let (mut want, mut got) = (vec![0.0; sources.len()], vec![f32::NAN; sources.len()]);
            gather_rows(&sources, &x, 1, &mut want);
            gather_runs(&runs, &x, &mut got);
            assert_eq!(got, want, "{} runs", runs.len());
        }
        let scattered: Vec<u32> = (0..64).map(|i| (i * 37 % 101) as u32).collect();
        assert_eq!(Run::of(&scattered), None);
    }

    /// Global average pools on every level this CPU has against a sequential f64 mean, on images
    /// shorter than, equal to and longer than the 64 partial sums, one sample and several.
    #[test]
    fn channel_means_match_a_plain_mean() {
        for pixels in [1, 7, 63, 64, 65, 196, 12544] {
            for w in [1, 3, 16] {
                let channels = 5;
                let x: Vec<f32> = (0..channels * pixels * w).map(|i| ((i * 7919) % 1009) as f32 / 97.0 - 5.0).collect();
                let want: Vec<f32> = (0..channels * w)
                    .map(|o| {
                        let (c, s) = (o / w, o % w);
                        ((0..pixels).map(|p| x[(c * pixels + p) * w + s] as f64).sum::<f64>() / pixels as f64) as f32
                    })
                    .collect();
                for isa in Isa::available() {
                    let mut y = vec![f32::NAN; channels * w];
                    channel_means(isa, &x, pixels, w, &mut y);
                    for (g, e) in y.iter().zip(&want) {
                        assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "{isa:?} pixels {pixels} w {w}: {g} against {e}");
                    }
                }
            }
        }
    }

    /// `binary` against a plain per-element reference on broadcast shapes of every kind.
    #[test]
    fn binary_stretches_match_a_plain_reference() {
        let cases: [(&[usize], &[usize]); 7] = [
            (&[3, 4, 5], &[3, 1, 1]),
            (&[3, 4, 5], &[5]),
            (&[3, 4, 5], &[1, 4, 1]),
            (&[3, 4, 5], &[3, 4, 5]),
            (&[2, 1, 5], &[2, 3, 1]),
            (&[1], &[4, 2]),
            (&[3, 1, 1], &[3, 4, 5]),
        ];
        for (sa, sb) in cases {
            let shape = crate::graph::broadcast(sa, sb).unwrap();
            let rank = shape.len();
            for w in [1, 3] {
                let na: usize = sa.iter().product();
                let nb: usize = sb.iter().product();
                let a: Vec<f32> = (0..na * w).map(|i| i as f32 * 0.5 + 1.0).collect();
                let b: Vec<f32> = (0..nb * w).map(|i| 7.0 - i as f32 * 0.25).collect();
                let (sa_s, sb_s) = (broadcast_strides(sa, rank), broadcast_strides(sb, rank));
                let features: usize = shape.iter().product();
                let mut want = vec![0.0; features * w];
                let mut got = vec![0.0; features * w];
                // Each output feature's operand features, from its index digit by digit.
                let operands = |f: usize| {
                    let (mut rest, mut ia, mut ib) = (f, 0, 0);
                    for d in (0..rank).rev() {
                        let i = rest % shape[d];
                        rest /= shape[d];
                        ia += i * sa_s[d];
                        ib += i * sb_s[d];
                    }
                    (ia, ib)
                };
                for f in 0..features {
                    let (ia, ib) = operands(f);
                    for s in 0..w {
                        want[f * w + s] = a[ia * w + s] - b[ib * w + s];
                    }
                }
                whole(BinaryKind::Sub, &shape, &a, &sa_s, Operand::Tile(&b), &sb_s, false, w, &mut got);
                assert_eq!(got, want, "{sa:?} - {sb:?}, w {w}");
                // A constant operand: one number per feature for every sample.
                let c: Vec<f32> = (0..nb).map(|i| 3.0 + i as f32).collect();
                for f in 0..features {
                    let (ia, ib) = operands(f);
                    for s in 0..w {
                        want[f * w + s] = c[ib] / a[ia * w + s];
                    }
                }
                whole(BinaryKind::Div, &shape, &a, &sa_s, Operand::Constant(&c), &sb_s, true, w, &mut got);
                assert_eq!(got, want, "{sb:?} / {sa:?} constant, w {w}");
            }
        }
    }

    #[test]
    fn exp_and_sigmoid_match_the_library() {
        // Down to -87: below, results are subnormal and come out as the smallest normal.
        for i in -1990..=2000 {
            let x = i as f32 * 0.0437;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 2e-7 * want, "exp({x}) = {got}, library {want}");
            assert!((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs() < 1e-7, "sigmoid({x})");
        }
        assert!(exp(-200.0) < 1e-37 && exp(200.0) > 1e38, "clamped, not wrapped");
    }

    #[test]
    fn erf_matches_the_fit_in_double_precision() {
        let twin = |x: f32| {
            let z = (x as f64).abs();
            let t = 1.0 / (1.0 + 0.5 * z);
            let c = [
                1.000_023_68,
                0.374_091_96,
                0.096_784_18,
                -0.186_288_06,
                0.278_868_07,
                -1.135_203_98,
                1.488_515_87,
                -0.822_152_23,
                0.170_872_77,
            ];
            let poly = -z * z - 1.265_512_23 + t * c.iter().rev().fold(0.0, |acc, &k| acc * t + k);
            let erfc = t * poly.exp();
            if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }
        };
        let worst = (-60_000..=60_000).map(|i| i as f32 * 1e-4).map(|x| (erf(x) as f64 - twin(x)).abs()).fold(0.0, f64::max);
        assert!(worst < 5e-7, "{worst}");
    }

    #[test]
    fn erf_matches_known_values() {
        for (x, e) in [(0.0f32, 0.0f32), (0.5, 0.520_499_9), (1.0, 0.842_700_8), (-2.0, -0.995_322_3), (3.5, 0.999_999_3)] {
            assert!((erf(x) - e).abs() < 5e-7, "erf({x}) = {} not {e}", erf(x));
        }
    }

    #[test]
    fn binary_broadcasts_like_numpy() {
        // [2, 3] * [3] per sample, 2 samples: a[f * 2 + s].
        let a: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let c = [1.0, 10.0, 100.0];
        let mut y = vec![0.0; 12];
        whole(
            BinaryKind::Mul,
            &[2, 3],
            &a,
            &broadcast_strides(&[2, 3], 2),
            Operand::Constant(&c),
            &broadcast_strides(&[3], 2),
            false,
            2,
            &mut y,
        );
        let want: Vec<f32> = (0..12).map(|i| (i as f32) * c[(i / 2) % 3]).collect();
        assert_eq!(y, want);
        // [2, 1] - [1, 3] = [2, 3], two tiles; swapped: b - a.
        let (p, q) = ([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        let mut y = vec![0.0; 12];
        whole(
            BinaryKind::Sub,
            &[2, 3],
            &p,
            &broadcast_strides(&[2, 1], 2),
            Operand::Tile(&q),
            &broadcast_strides(&[1, 3], 2),
            true,
            2,
            &mut y,
        );
        assert_eq!(y, vec![9.0, 18.0, 29.0, 38.0, 49.0, 58.0, 7.0, 16.0, 27.0, 36.0, 47.0, 56.0]);
    }
}
