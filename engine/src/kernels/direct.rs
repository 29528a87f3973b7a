//! Sparse direct convolution, `f32-conv-direct`: each non-zero weight `(c, ky, kx)` of output
//! channel `o` adds `value * input row` to an output row, read straight from the image tile
//! instead of an im2col copy. With the samples innermost (`[c, h, wd, w]`, see `window`), an
//! output row is `ow * w` contiguous floats and, at stride 1, so is the input span it reads; so
//! the kernel keeps up to 8 vectors of an output row in registers and runs every non-zero of the
//! channel over them. For layers with few channels (LeNet-5's 1 -> 6 convolution) im2col writes
//! far more than the multiply-adds read, which is what this saves.
//!
//! The weights are the layer's CSR matrix `[out, c * kh * kw]` (the im2col column order), so
//! the same packing serves both paths; the vector kernels read it decoded into taps (`Taps`,
//! once per layer). Vector variants: AVX-512 and AVX2, for tiles whose width is a multiple of 16
//! or 8 (every vector then holds samples of one output position), and AVX-512 for one sample.
//! Where 4 consecutive output channels have their taps at the same places (dense layers, 4x1
//! block pruning) they run together, sharing each input load.

use std::ops::Range;

use super::Isa;
use super::csr::Csr;
use super::elementwise;
use super::flat;
use super::window::Geometry;

fn check(
    m: &Csr,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    y: &[f32],
    residual: Option<&[f32]>,
    channels: &Range<usize>,
    rows: &Range<usize>,
) {
    let [kh, kw] = g.window.kernel;
    assert!(m.cols == g.channels * kh * kw && bias.len() == m.rows && channels.end <= m.rows, "weights do not match the geometry");
    check_tiles(g, x, y, residual, channels, rows);
}

/// The input, output and residual tiles hold what the geometry, `channels` and `rows` need.
fn check_tiles(g: &Geometry, x: &[f32], y: &[f32], residual: Option<&[f32]>, channels: &Range<usize>, rows: &Range<usize>) {
    let holds = |out: &[f32]| g.holds_output(out.len(), channels.len());
    assert!(rows.end <= g.out_hw[0] && g.holds_input(x.len()) && holds(y) && residual.is_none_or(holds), "input or output tile too small");
}

/// Scalar twin: output rows `rows` of output channels `channels`; `y` holds those channels as
/// `[channels.len(), oh, ow, w]` (rows outside `rows` are left as they are). A `residual` laid
/// out as `y` is added to the sums before the ReLU (a residual block's addition).
#[allow(clippy::too_many_arguments)] // the layer, the tiles, the part and what ends the sums
pub fn conv_direct_ref(
    m: &Csr,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    y: &mut [f32],
    channels: Range<usize>,
    rows: Range<usize>,
    relu: bool,
    residual: Option<&[f32]>,
) {
    check(m, bias, g, x, y, residual, &channels, &rows);
    let ([oh, ow], [h, wd], w) = (g.out_hw, g.in_hw, g.w);
    for (i, o) in channels.enumerate() {
        for oy in rows.clone() {
            let out = &mut y[(i * oh + oy) * ow * w..][..ow * w];
            out.fill(bias[o]);
            for j in m.row_ptr[o] as usize..m.row_ptr[o + 1] as usize {
                let (c, ky, kx) = g.tap(m.col[j] as usize);
                let Some(iy) = g.source(0, oy, ky) else { continue };
                for ox in 0..ow {
                    let Some(ix) = g.source(1, ox, kx) else { continue };
                    let src = &x[((c * h + iy) * wd + ix) * w..][..w];
                    out[ox * w..(ox + 1) * w].iter_mut().zip(src).for_each(|(o, s)| *o += m.val[j] * s);
                }
            }
            if let Some(r) = residual {
                out.iter_mut().zip(&r[(i * oh + oy) * ow * w..]).for_each(|(o, r)| *o += r);
            }
            if relu {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
    }
}

/// Whether a vector variant handles tiles of `w` samples under `isa` (a whole number of vectors
/// per output position).
pub fn vectorized(isa: Isa, w: usize) -> bool {
    match isa {
        Isa::Avx512 => w.is_multiple_of(16) && w > 0,
        Isa::Avx2 => w.is_multiple_of(8) && w > 0,
        Isa::Scalar => false,
    }
}

/// Whether `conv_direct` runs a vector kernel for `g` on tiles of `w` samples: a whole number of
/// vectors per output position, or with AVX-512 one sample at stride 1 along rows (vectors of 16
/// output columns).
pub fn takes(isa: Isa, w: usize, g: &Geometry) -> bool {
    vectorized(isa, w) || (isa == Isa::Avx512 && w == 1 && RowBuffer::of(g).is_some())
}

/// The one-sample AVX-512 kernel's copy of the input rows that a pair of output rows reads
/// (stride 1 along rows): per input channel `span` padded rows of `row_len` floats, each row
/// `left` zeros, the input row, then zeros up to the last vector's reach; an odd number of cache
/// lines long, so that the rows of different channels do not share L1 sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RowBuffer {
    row_len: usize,
    span: usize,
}

impl RowBuffer {
    /// The buffer for `g`'s one-sample kernel, if `g` has stride 1 along rows and the buffer's
    /// every float is addressable with a `u32` offset.
    pub(crate) fn of(g: &Geometry) -> Option<RowBuffer> {
        let ([_, ow], [_, wd], [kh, kw]) = (g.out_hw, g.in_hw, g.window.kernel);
        let ([stride, _], [dilation, dilation_x]) = (g.window.stride, g.window.dilation);
        if g.window.stride[1] != 1 {
            return None;
        }
        let reach = ow.div_ceil(16).checked_mul(16)?.checked_add((kw - 1).checked_mul(dilation_x)?)?;
        let padded = g.window.pads[1].checked_add(wd)?.checked_add(g.window.pads[3])?;
        let row_len = (reach.max(padded).checked_next_multiple_of(16)?) | 16;
        // Output rows oy and oy + 1 read padded rows oy * stride + j for j < span.
        let span = (kh - 1).checked_mul(dilation)?.checked_add(1 + stride)?;
        let floats = g.channels.checked_mul(span)?.checked_mul(row_len)?;
        (u32::try_from(floats).is_ok()).then_some(RowBuffer { row_len, span })
    }

    /// Floats per input channel.
    fn channel_len(&self) -> usize {
        self.span * self.row_len
    }

    /// Where tap `(c, ky, kx)` of the first output row of a pair reads its first vector, in
    /// floats from the buffer's start; the second row reads `stride` rows further.
    fn offset(&self, g: &Geometry, (c, ky, kx): (usize, usize, usize)) -> u32 {
        let at = c * self.channel_len() + ky * g.window.dilation[0] * self.row_len + kx * g.window.dilation[1];
        // Inside the buffer, whose length fits a u32 (`of`).
        at as u32
    }
}

/// One output channel's tap: input channel, kernel row, kernel column, weight. 32-bit places
/// (each below the CSR column it came from, a `u32`) keep a tap in 16 bytes: the taps of
/// ResNet-50's 7x7 layers (236 thousand at 90%) stream from memory on every call.
pub(crate) type Tap = (u32, u32, u32, f32);

/// Output channels that the vector kernels run together where their taps sit at the same places
/// (a dense layer, or one pruned in blocks of 4 output channels, `mask = "4x1"`).
pub const BLOCK: usize = 4;

/// A tap shared by the `BLOCK` channels of a block: input channel, kernel row, kernel column,
/// and each channel's weight.
type BlockTap = (usize, usize, usize, [f32; BLOCK]);

/// A convolution's non-zero weights decoded for the vector kernels, once per layer (the compiler
/// keeps them with the layer): each output channel's taps. Decoding per call had taken a fifth of
/// a batch-1 LeNet-5 run, whose row bands call the kernel once per output row.
#[derive(Debug, Clone, PartialEq)]
pub struct Taps {
    rows: usize,
    cols: usize,
    taps: Vec<Tap>,
    /// `taps[first[o]..first[o + 1]]` are output channel `o`'s.
    first: Vec<usize>,
    /// Per block of `BLOCK` output channels (`b * BLOCK..`), where all of them have their taps at
    /// the same places, those taps with the block's weights. An input vector loaded for such a
    /// tap serves every channel of the block: for a dense convolution the AVX-512 kernels then
    /// read 10 vectors per 24 multiply-adds instead of one per multiply-add.
    blocks: Vec<Option<Vec<BlockTap>>>,
    /// For the one-sample AVX-512 row kernel (where `g` has a `RowBuffer` and one sample does not
    /// run on `flat`), each tap of `taps` as its offset in that buffer and its weight: a tap then
    /// costs an add, where working out its place per row pair had left the kernel at 40% of the
    /// multiply-add peak.
    in_rows: Vec<(u32, f32)>,
    /// The geometry the taps were decoded for, at one sample: `in_rows` holds for it alone.
    one_sample: Geometry,
}

impl Taps {
    /// `m`'s non-zeros as taps of the window of `g` (`m.cols` must be `g`'s channels times its
    /// kernel size).
    pub fn new(m: &Csr, g: &Geometry) -> Taps {
        let [kh, kw] = g.window.kernel;
        assert_eq!(m.cols, g.channels * kh * kw, "weights do not match the geometry");
        let taps = (0..m.nnz()).map(|j| {
            // Each part is at most the column, a u32.
            let (c, ky, kx) = g.tap(m.col[j] as usize);
            (c as u32, ky as u32, kx as u32, m.val[j])
        });
        let first: Vec<usize> = m.row_ptr.iter().map(|&p| p as usize).collect();
        let mut taps: Vec<Tap> = taps.collect();
        // Each channel's taps in input-channel order (`flat` runs them a block of input channels
        // at a time), whatever order the matrix kept its columns in.
        for o in 0..m.rows {
            taps[first[o]..first[o + 1]].sort_by_key(|&(c, ky, kx, _)| (c, ky, kx));
        }
        let one_sample = Geometry { w: 1, ..*g };
        let mut t = Taps { rows: m.rows, cols: m.cols, taps, first, blocks: Vec::new(), in_rows: Vec::new(), one_sample };
        t.blocks = (0..m.rows / BLOCK).map(|b| t.shared(b)).collect();
        if let Some(b) = RowBuffer::of(g).filter(|_| !t.runs_flat(Isa::Avx512, &one_sample)) {
            t.in_rows = t.taps.iter().map(|&(c, ky, kx, v)| (b.offset(g, (c as usize, ky as usize, kx as usize)), v)).collect();
        }
        t
    }

    /// Output channel `o`'s taps, in order of input channel, then kernel row and column.
    pub(crate) fn of(&self, o: usize) -> &[Tap] {
        &self.taps[self.first[o]..self.first[o + 1]]
    }

    /// Block `b`'s taps with its channels' weights, if its channels have taps at the same places.
    fn shared(&self, b: usize) -> Option<Vec<BlockTap>> {
        let channels: [&[Tap]; BLOCK] = std::array::from_fn(|k| self.of(b * BLOCK + k));
        let place = |t: &Tap| (t.0, t.1, t.2);
        let same = channels.iter().all(|c| c.len() == channels[0].len() && c.iter().zip(channels[0]).all(|(a, b)| place(a) == place(b)));
        let tap = |j: usize| {
            let (c, ky, kx, _) = channels[0][j];
            (c as usize, ky as usize, kx as usize, std::array::from_fn(|k| channels[k][j].3))
        };
        same.then(|| (0..channels[0].len()).map(tap).collect())
    }

    /// Output channels (the weights' rows).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input channels times the kernel's size (the weights' columns).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// How many of the layer's blocks of `BLOCK` output channels have their taps at the same
    /// places (and run together: a caller splitting channels then cuts at multiples of `BLOCK`),
    /// and how many blocks there are.
    pub fn shared_blocks(&self) -> (usize, usize) {
        (self.blocks.iter().filter(|b| b.is_some()).count(), self.blocks.len())
    }

    /// Whether one sample of `g` runs on `flat`'s kernel under `isa`: unstructured taps (no
    /// shared blocks) on output rows shorter than `FLAT_BELOW`.
    fn runs_flat(&self, isa: Isa, g: &Geometry) -> bool {
        flat::takes(isa, g) && self.shared_blocks().0 == 0 && g.out_hw[1] < FLAT_BELOW
    }

    /// Whether the taps were decoded for `g` (its tile width aside), so that their offsets hold.
    fn decoded_for(&self, g: &Geometry) -> bool {
        Geometry { w: 1, ..*g } == self.one_sample
    }

    /// The shared taps of the block that starts at output channel `o`, if there is one.
    fn block_at(&self, o: usize) -> Option<&[BlockTap]> {
        if !o.is_multiple_of(BLOCK) {
            return None;
        }
        self.blocks.get(o / BLOCK).and_then(|b| b.as_deref())
    }
}

/// One-sample output rows shorter than this run on `flat`'s kernel (several rows per vector)
/// rather than the row buffer's (whole vectors per row).
pub const FLAT_BELOW: usize = 32;

/// Runs the variant for `isa` (which the CPU must support); other widths use the scalar twin.
/// Decodes the weights first: a caller that runs the layer often keeps `Taps` and calls
/// `conv_direct_decoded`.
#[allow(clippy::too_many_arguments)] // conv_direct_ref's arguments
pub fn conv_direct(
    isa: Isa,
    m: &Csr,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    y: &mut [f32],
    channels: Range<usize>,
    rows: Range<usize>,
    relu: bool,
    residual: Option<&[f32]>,
) {
    check(m, bias, g, x, y, residual, &channels, &rows);
    if !takes(isa, g.w, g) {
        return conv_direct_ref(m, bias, g, x, y, channels, rows, relu, residual);
    }
    conv_direct_decoded(isa, &Taps::new(m, g), bias, g, x, y, channels, rows, relu, residual)
}

/// `conv_direct` on weights decoded once (`Taps::new(m, g)`, for the same window), for the tiles
/// a vector variant takes (`takes(isa, g.w, g)`).
#[allow(clippy::too_many_arguments)] // conv_direct's arguments
pub fn conv_direct_decoded(
    isa: Isa,
    t: &Taps,
    bias: &[f32],
    g: &Geometry,
    x: &[f32],
    y: &mut [f32],
    channels: Range<usize>,
    rows: Range<usize>,
    relu: bool,
    residual: Option<&[f32]>,
) {
    let [kh, kw] = g.window.kernel;
    assert!(t.cols == g.channels * kh * kw && bias.len() == t.rows && channels.end <= t.rows, "weights do not match the geometry");
    check_tiles(g, x, y, residual, &channels, &rows);
    assert!(takes(isa, g.w, g), "no vector kernel for tiles of {} samples", g.w);
    // The kernels for one sample add a residual after their sums are stored.
    let (sums_relu, after) = match residual {
        Some(r) if !vectorized(isa, g.w) => (false, Some(r)),
        _ => (relu, None),
    };
    // SAFETY: sizes checked above; every tap's input channel is below g.channels and its kernel
    // offsets inside the window (decoded from columns < cols), so every (c, iy, ix) the kernels
    // read addresses a pixel of `x`; the ISA was chosen from the CPU.
    #[cfg(target_arch = "x86_64")]
    match isa {
        // Unstructured taps on small images: several output rows per vector (`flat`).
        Isa::Avx512 if t.runs_flat(isa, g) => flat::conv_direct_flat(isa, t, bias, g, x, y, channels.clone(), rows.clone(), sums_relu),
        Isa::Avx512 if !vectorized(isa, g.w) => unsafe {
            x86::conv_direct_one_avx512(t, bias, g, x, y, channels.clone(), rows.clone(), sums_relu)
        },
        Isa::Avx512 => unsafe { x86::conv_direct_avx512(t, bias, g, x, y, residual, channels.clone(), rows.clone(), relu) },
        _ => unsafe { x86::conv_direct_avx2(t, bias, g, x, y, residual, channels.clone(), rows.clone(), relu) },
    }
    if let Some(r) = after {
        let ([oh, ow], w) = (g.out_hw, g.w);
        for i in 0..channels.len() {
            let span = (i * oh + rows.start) * ow * w..(i * oh + rows.end) * ow * w;
            elementwise::add_in_place(isa, &mut y[span.clone()], &r[span], relu, None);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::ops::Range;

    use super::{BLOCK, BlockTap, Geometry, RowBuffer, Tap, Taps};
    use crate::kernels::lines::LineAligned;

    /// Vectors of an output row kept in registers at once.
    const CHUNK: usize = 8;

    /// Vectors of an output row that the AVX-512 kernel for several samples keeps in registers
    /// for one channel (a row cut into even parts of at most this many).
    const CHUNK512: usize = 16;
    const _: () = assert!(CHUNK512 == 16, "the AVX-512 kernel's match arms cover 1..=16 vectors");

    /// One sample (`g.w == 1`) at stride 1 along rows: each vector holds 16 consecutive output
    /// columns of a row. The input rows that two consecutive output rows read (every channel,
    /// every kernel row) are first copied into a `RowBuffer` with the padding's zeros around them,
    /// rows a few floats longer than the image's: each tap then reads 16 consecutive input columns
    /// per vector without masks, and the rows of different channels do not share L1 sets (an
    /// image's channel planes are often a multiple of 4 KB apart: 96 x 96 floats are 36 KB, and
    /// reading 32 channels' rows straight from the image ran 4x below the multiply-add rate).
    /// Pairs of rows, then chunks of up to 8 vectors, then channels; each tap's weight and
    /// offset, loaded once, serve both rows of the pair. The buffer holds each pair's rows at the
    /// same places, so a tap's offset is the same for every pair (`Taps::in_rows`); the rows the
    /// previous pair also read are copied again (a ring that kept them had to look each tap's
    /// row up per pair).
    ///
    /// # Safety
    /// AVX-512F; `g.w == 1` and `RowBuffer::of(g)` is some; sizes and `t` as
    /// `super::conv_direct_decoded` checks them (taps decoded for `g`'s window).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn conv_direct_one_avx512(
        t: &Taps,
        bias: &[f32],
        g: &Geometry,
        x: &[f32],
        y: &mut [f32],
        channels: Range<usize>,
        rows: Range<usize>,
        relu: bool,
    ) {
        let ([oh, ow], [h, wd], [kh, _]) = (g.out_hw, g.in_hw, g.window.kernel);
        let layout = RowBuffer::of(g).expect("the one-sample kernel takes this geometry");
        assert!(t.decoded_for(g) && t.in_rows.len() == t.taps.len(), "taps decoded for this geometry's row buffer");
        let (row_len, span, channel_len) = (layout.row_len, layout.span, layout.channel_len());
        let (stride, dilation, left) = (g.window.stride[0], g.window.dilation[0], g.window.pads[1]);
        let vectors = ow.div_ceil(16);
        // The buffer starts on a cache line, so that kernel column 0 (the buffer rows' starts, as
        // rows are whole cache lines) reads whole lines; columns 1 and 2 read across two. From
        // a 16-byte-aligned allocation every load could split (1.2x slower in a timing of one
        // 96x96 layer).
        let mut buf = LineAligned::zeroed(g.channels * channel_len);
        // Per kernel row, the offset of the buffer row that each output row of the pair reads.
        let slots: Vec<[usize; 2]> = (0..kh).map(|ky| [ky * dilation * row_len, (ky * dilation + stride) * row_len]).collect();
        let last_lanes: __mmask16 = if ow % 16 == 0 { 0xffff } else { (1u16 << (ow % 16)) - 1 };
        let mut oy = rows.start;
        while oy < rows.end {
            let pair = rows.end - oy >= 2;
            // Buffer row j: padded input row oy * stride + j.
            for j in 0..span - if pair { 0 } else { stride } {
                for c in 0..g.channels {
                    let dst = &mut buf[c * channel_len + j * row_len + left..][..wd];
                    match (oy * stride + j).checked_sub(g.window.pads[0]).filter(|&iy| iy < h) {
                        Some(iy) => copy16(dst, &x[(c * h + iy) * wd..][..wd]),
                        None => dst.fill(0.0),
                    }
                }
            }
            let filled = Filled { buf: &buf, channel_len, dilation: g.window.dilation[1], slots: &slots };
            let mut v0 = 0;
            while v0 < vectors {
                let n = (vectors - v0).min(CHUNK);
                let mut o = channels.start;
                while o < channels.end {
                    let i = o - channels.start;
                    if let Some(taps) = t.block_at(o).filter(|_| o + BLOCK <= channels.end) {
                        let run = BlockRows { filled, taps, relu };
                        let bias: [f32; BLOCK] = std::array::from_fn(|k| bias[o + k]);
                        for r in 0..1 + pair as usize {
                            for (z0, len) in even_parts(n, BLOCK_VECTORS) {
                                let last = if v0 + z0 + len == vectors { last_lanes } else { 0xffff };
                                // SAFETY: vectors v0 + z0.. of row oy + r of channels o..o + BLOCK
                                // (at i.. in `y`, planes oh * ow apart) are output columns.
                                unsafe {
                                    let out = y.as_mut_ptr().add((i * oh + oy + r) * ow + (v0 + z0) * 16);
                                    macro_rules! go {
                                        ($($n:literal)*) => {
                                            match len {
                                                $($n => run.go::<$n>(v0 + z0, r, bias, out, oh * ow, last),)*
                                                _ => unreachable!("parts hold 1 to {BLOCK_VECTORS} vectors"),
                                            }
                                        };
                                    }
                                    go!(1 2 3 4 5 6);
                                }
                            }
                        }
                        o += BLOCK;
                        continue;
                    }
                    let run = Rows {
                        // SAFETY: vector v0 of buffer row 0 lies inside the buffer.
                        buf: unsafe { buf.as_ptr().add(v0 * 16) },
                        taps: &t.in_rows[t.first[o]..t.first[o + 1]],
                        next_row: stride * row_len,
                        bias: bias[o],
                        relu,
                    };
                    let store = |z: usize| if v0 + z + 1 == vectors { last_lanes } else { 0xffff };
                    // SAFETY: the stored lanes of vectors v0..v0 + n are output columns of rows
                    // (i, oy) and, for a pair, (i, oy + 1).
                    unsafe {
                        let out = y.as_mut_ptr().add((i * oh + oy) * ow + v0 * 16);
                        macro_rules! go {
                            ($($n:literal)*) => {
                                match (n, pair) {
                                    $(($n, true) => run.go::<$n, 2>(out, ow, store($n - 1)),)*
                                    $(($n, false) => run.go::<$n, 1>(out, ow, store($n - 1)),)*
                                    _ => unreachable!("chunks hold 1 to {CHUNK} vectors"),
                                }
                            };
                        }
                        go!(1 2 3 4 5 6 7 8);
                    }
                    o += 1;
                }
                v0 += n;
            }
            oy += 1 + pair as usize;
        }
    }

    /// `dst.copy_from_slice(src)` in 16-float vectors, the last one masked: the rows copied into
    /// the one-sample kernel's row buffer are a few hundred bytes, where a call to `memcpy` per row
    /// had taken a tenth of the convolution stack's time at batch 1.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn copy16(dst: &mut [f32], src: &[f32]) {
        assert_eq!(dst.len(), src.len(), "copy between rows of different lengths");
        let mut k = 0;
        while k < dst.len() {
            let m: __mmask16 = if dst.len() - k >= 16 { 0xffff } else { (1u16 << (dst.len() - k)) - 1 };
            // SAFETY: the masked lanes are k..min(k + 16, len) of both slices.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(k), m, _mm512_maskz_loadu_ps(m, src.as_ptr().add(k))) };
            k += 16;
        }
    }

    /// The row buffer of `conv_direct_one_avx512` filled for one pair of output rows: input
    /// channel `c`'s rows start at `c * channel_len`, and kernel row `ky` of output row `r` is
    /// the buffer row at `slots[ky][r]` within them.
    #[derive(Clone, Copy)]
    struct Filled<'a> {
        buf: &'a [f32],
        channel_len: usize,
        /// Dilation along rows.
        dilation: usize,
        slots: &'a [[usize; 2]],
    }

    impl Filled<'_> {
        /// Where tap `(c, ky, kx)` of output row `r` starts reading: a buffer row plus the
        /// kernel column.
        ///
        /// # Safety
        /// The tap is one of the window the buffer was filled for (`c` below its channels).
        #[inline]
        unsafe fn tap(&self, c: usize, ky: usize, kx: usize, r: usize) -> *const f32 {
            // SAFETY: channel c's rows hold kernel row ky's buffer row at slots[ky][r], whose
            // reach covers every kernel column (the caller's contract).
            unsafe { self.buf.as_ptr().add(c * self.channel_len + kx * self.dilation + self.slots[ky][r]) }
        }
    }

    /// Vectors `v0..v0 + N` of `R` consecutive output rows (1 or 2) of one channel, from the row
    /// buffer.
    struct Rows<'a> {
        /// Vector `v0` of the buffer's first row.
        buf: *const f32,
        /// The channel's taps: offset in the buffer (`Taps::in_rows`) and weight.
        taps: &'a [(u32, f32)],
        /// Floats from a tap's place for the first output row to the second's.
        next_row: usize,
        bias: f32,
        relu: bool,
    }

    /// Runs of at most this many vectors (`R * N`) keep two sets of sums, for taps in turn: on
    /// 64 channels at 56x56 (4 vectors, 2 rows) 0.574 ms against 0.605 with one
    /// (`results/direct-rows.md`).
    const TWO_SETS: usize = 8;

    impl Rows<'_> {
        /// # Safety
        /// AVX-512F; `out` is vector `v0` of the first output row, the next rows `ow` floats
        /// apart; all of vectors v0..v0 + N are inside `y` in each row but the last, whose
        /// lanes `last` are.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn go<const N: usize, const R: usize>(&self, out: *mut f32, ow: usize, last: __mmask16) {
            let mut acc = [[_mm512_set1_ps(self.bias); N]; R];
            let tap = |acc: &mut [[__m512; N]; R], &(offset, value): &(u32, f32)| {
                let weight = _mm512_set1_ps(value);
                // SAFETY: a tap of the layer's window (its offset inside the buffer); vectors
                // v0..v0 + N of every buffer row lie inside it.
                let src = unsafe { self.buf.add(offset as usize) };
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (z, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(weight, unsafe { _mm512_loadu_ps(src.add(r * self.next_row + 16 * z)) }, *a);
                    }
                }
            };
            if N * R <= TWO_SETS {
                let mut other = [[_mm512_setzero_ps(); N]; R];
                let (pairs, odd) = self.taps.as_chunks::<2>();
                for [a, b] in pairs {
                    tap(&mut acc, a);
                    tap(&mut other, b);
                }
                odd.iter().for_each(|t| tap(&mut acc, t));
                for (acc, other) in acc.iter_mut().zip(other) {
                    acc.iter_mut().zip(other).for_each(|(a, b)| *a = _mm512_add_ps(*a, b));
                }
            } else {
                self.taps.iter().for_each(|t| tap(&mut acc, t));
            }
            for (r, acc) in acc.iter().enumerate() {
                for (z, a) in acc.iter().enumerate() {
                    let v = if self.relu { _mm512_max_ps(*a, _mm512_setzero_ps()) } else { *a };
                    let mask = if z + 1 == N { last } else { 0xffff };
                    // SAFETY: the stored lanes are output columns of the rows (the caller's contract).
                    unsafe { _mm512_mask_storeu_ps(out.add(r * ow + 16 * z), mask, v) };
                }
            }
        }
    }

    /// Vectors of one output row held per channel of a block at once (`BLOCK` times this many
    /// accumulators, plus the block's weights and the input vector, fit the 32 registers).
    const BLOCK_VECTORS: usize = 6;

    /// One output row of the `BLOCK` channels of a block whose taps sit at the same places
    /// (`Taps::block_at`), from the row buffer of `conv_direct_one_avx512` (as `Rows`): each input
    /// vector is loaded once for all of them.
    struct BlockRows<'a> {
        filled: Filled<'a>,
        taps: &'a [BlockTap],
        relu: bool,
    }

    impl BlockRows<'_> {
        /// Vectors `v0..v0 + N` of row `r` of the buffer's pair; channel `k`'s output row at
        /// `out + k * plane`.
        ///
        /// # Safety
        /// AVX-512F; vectors v0..v0 + N lie inside each channel's output row, the last one's
        /// lanes `last`.
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn go<const N: usize>(&self, v0: usize, r: usize, bias: [f32; BLOCK], out: *mut f32, plane: usize, last: __mmask16) {
            let mut acc: [[__m512; N]; BLOCK] = std::array::from_fn(|k| [_mm512_set1_ps(bias[k]); N]);
            for &(c, ky, kx, values) in self.taps {
                let weights: [__m512; BLOCK] = std::array::from_fn(|k| _mm512_set1_ps(values[k]));
                // SAFETY: as in `Rows::go`: a tap of the layer's window, vectors v0..v0 + N
                // within the row's reach.
                let src = unsafe { self.filled.tap(c, ky, kx, r).add(v0 * 16) };
                for z in 0..N {
                    let v = unsafe { _mm512_loadu_ps(src.add(16 * z)) };
                    for (a, w) in acc.iter_mut().zip(&weights) {
                        a[z] = _mm512_fmadd_ps(*w, v, a[z]);
                    }
                }
            }
            for (k, acc) in acc.iter().enumerate() {
                for (z, a) in acc.iter().enumerate() {
                    let v = if self.relu { _mm512_max_ps(*a, _mm512_setzero_ps()) } else { *a };
                    let mask = if z + 1 == N { last } else { 0xffff };
                    // SAFETY: the stored lanes are output columns of channel k's row (the
                    // caller's contract).
                    unsafe { _mm512_mask_storeu_ps(out.add(k * plane + 16 * z), mask, v) };
                }
            }
        }
    }

    /// Vectors `v0..` of one output row of one channel or of a block's `K`: all taps
    /// accumulated in registers, then stored.
    struct Chunk<'a> {
        g: &'a Geometry,
        x: &'a [f32],
        oy: usize,
        v0: usize,
        /// Output position and sample offset of each vector of the chunk (worked out once per
        /// chunk, not per output channel: it divides by the tile width).
        pos: &'a [(usize, usize)],
        /// At stride 1 along rows, where each kernel place reads for the whole chunk
        /// (`Place::fill`); this part starts `part` vectors into it.
        places: &'a [Place],
        part: usize,
        relu: bool,
        /// The first channel's output row; the next channels' `plane` floats apart.
        y: *mut f32,
        /// The residual to add to the sums before the ReLU, laid out as `y`.
        residual: Option<*const f32>,
        plane: usize,
    }

    /// Where kernel place `(ky, kx)` reads the vectors of a chunk of an output row, at stride 1
    /// along rows (each vector then reads `lanes` consecutive floats, and the chunk's vectors one
    /// contiguous span): worked out once per chunk for every output channel, so that a tap costs
    /// an index and an add rather than the bounds checks of its row and columns.
    #[derive(Clone, Copy, Default)]
    struct Place {
        /// Where vector 0 reads, in floats from the start of input channel 0 (vector `z` reads
        /// `lanes * z` further); may lie outside the image where vector 0 does.
        start: isize,
        /// Bit `z` set where vector `z` reads inside the image (none where the kernel row falls
        /// in the padding).
        inside: u32,
    }

    impl Place {
        /// The places of `g`'s window for output row `oy`, for the chunk of vectors at `pos`
        /// (output column and sample offset of each; stride 1 along rows).
        fn fill(places: &mut [Place], g: &Geometry, oy: usize, pos: &[(usize, usize)]) {
            let ([kh, kw], [_, wd], w) = (g.window.kernel, g.in_hw, g.w);
            let (dilation, pad) = (g.window.dilation[1], g.window.pads[1]);
            for ky in 0..kh {
                for kx in 0..kw {
                    let place = &mut places[ky * kw + kx];
                    let Some(iy) = g.source(0, oy, ky) else {
                        *place = Place::default();
                        continue;
                    };
                    // Input column of output column ox: ox + kx * dilation - pad.
                    let column = |ox: usize| (ox + kx * dilation) as isize - pad as isize;
                    let (ox, s) = pos[0];
                    place.start = ((iy * wd) as isize + column(ox)) * w as isize + s as isize;
                    place.inside = pos
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| (0..wd as isize).contains(&column(p.0)))
                        .fold(0, |bits, (z, _)| bits | 1 << z);
                }
            }
        }
    }

    /// `n` vectors cut into as few parts of at most `most` as can be, of even lengths: `(first,
    /// length)` of each (a block holds `most` vectors per channel in registers).
    fn even_parts(n: usize, most: usize) -> impl Iterator<Item = (usize, usize)> {
        let parts = n.div_ceil(most);
        (0..parts).map(move |p| (n * p / parts, n * (p + 1) / parts - n * p / parts))
    }

    /// A single channel's taps in the form of a block's.
    fn one_channel(taps: &[Tap]) -> impl Iterator<Item = (usize, usize, usize, [f32; 1])> + '_ {
        taps.iter().map(|&(c, ky, kx, v)| (c as usize, ky as usize, kx as usize, [v]))
    }

    /// The kernel for one vector width: `$lanes` samples per vector, `$vec` its type and the
    /// intrinsics that load, multiply-add and store it. Output rows, then chunks of a row, then
    /// channels: the input spans one chunk reads (a few rows of each input channel) stay in L1
    /// while every output channel uses them.
    macro_rules! direct_kernel {
        ($name:ident, $go:ident, $store:ident, $feature:literal, $lanes:literal, $chunk:expr, [$($arm:literal)*], $block_vectors:literal, $vec:ty,
         $set1:ident, $fmadd:ident, $loadu:ident, $storeu:ident, $add:ident, $max:ident, $zero:ident) => {
            /// # Safety
            /// The CPU has the feature; `g.w` is a multiple of the lane count; sizes and `t` as
            /// `super::conv_direct_decoded` checks them (taps decoded for `g`'s window).
            #[target_feature(enable = $feature)]
            pub unsafe fn $name(
                t: &Taps,
                bias: &[f32],
                g: &Geometry,
                x: &[f32],
                y: &mut [f32],
                residual: Option<&[f32]>,
                channels: Range<usize>,
                rows: Range<usize>,
                relu: bool,
            ) {
                let ([oh, ow], w) = (g.out_hw, g.w);
                let row_vectors = ow * w / $lanes;
                let mut places = vec![Place::default(); g.window.kernel[0] * g.window.kernel[1]];
                for oy in rows {
                    for (v0, n) in even_parts(row_vectors, $chunk) {
                        let pos: [(usize, usize); $chunk] = std::array::from_fn(|z| ((v0 + z) * $lanes / w, (v0 + z) * $lanes % w));
                        if g.window.stride[1] == 1 {
                            Place::fill(&mut places, g, oy, &pos[..n]);
                        }
                        let mut o = channels.start;
                        while o < channels.end {
                            let i = o - channels.start;
                            // SAFETY: vectors v0..v0 + n of output row (i, oy) lie inside `y`, and
                            // for a block those of the next BLOCK - 1 channels too.
                            let row = (i * oh + oy) * ow * w;
                            let out = unsafe { y.as_mut_ptr().add(row) };
                            // SAFETY: the residual is laid out as `y` and as long.
                            let residual = residual.map(|r| unsafe { r.as_ptr().add(row) });
                            let chunk = |z0: usize, len: usize| Chunk {
                                g,
                                x,
                                oy,
                                v0: v0 + z0,
                                pos: &pos[z0..z0 + len],
                                places: &places,
                                part: z0,
                                relu,
                                residual,
                                y: out,
                                plane: oh * ow * w,
                            };
                            if let Some(taps) = t.block_at(o).filter(|_| o + BLOCK <= channels.end) {
                                let bias: [f32; BLOCK] = std::array::from_fn(|k| bias[o + k]);
                                for (z0, len) in even_parts(n, $block_vectors) {
                                    let run = chunk(z0, len);
                                    let taps = taps.iter().copied();
                                    // SAFETY: as above, for vectors v0 + z0.. of the block's rows.
                                    unsafe {
                                        match len {
                                            6 => run.$go::<BLOCK, 6>(taps, bias),
                                            5 => run.$go::<BLOCK, 5>(taps, bias),
                                            4 => run.$go::<BLOCK, 4>(taps, bias),
                                            3 => run.$go::<BLOCK, 3>(taps, bias),
                                            2 => run.$go::<BLOCK, 2>(taps, bias),
                                            _ => run.$go::<BLOCK, 1>(taps, bias),
                                        }
                                    }
                                }
                                o += BLOCK;
                                continue;
                            }
                            let (run, taps, bias) = (chunk(0, n), one_channel(t.of(o)), [bias[o]]);
                            // SAFETY: as above.
                            unsafe {
                                match n {
                                    $($arm => run.$go::<1, $arm>(taps, bias),)*
                                    _ => unreachable!("chunks hold 1 to {} vectors", $chunk),
                                }
                            }
                            o += 1;
                        }
                    }
                }
            }

            impl Chunk<'_> {
                /// Channels `K` (1, or a block's, whose taps sit at the same places) with their
                /// taps and biases, each input vector loaded once for all of them.
                ///
                /// # Safety
                /// As the kernel: `y` points at an output row holding vectors `v0..v0 + N`, and
                /// `plane` floats apart at the next `K - 1` channels' rows.
                #[inline]
                #[target_feature(enable = $feature)]
                unsafe fn $go<const K: usize, const N: usize>(
                    &self,
                    taps: impl Iterator<Item = (usize, usize, usize, [f32; K])>,
                    bias: [f32; K],
                ) {
                    let g = self.g;
                    let ([h, wd], w) = (g.in_hw, g.w);
                    let (stride, dilation, pad) = (g.window.stride[1], g.window.dilation[1], g.window.pads[1]);
                    let xp = self.x.as_ptr();
                    let pos = &self.pos[..N];
                    let mut acc: [[$vec; N]; K] = std::array::from_fn(|k| [$set1(bias[k]); N]);
                    if let Some(r) = self.residual {
                        for (k, acc) in acc.iter_mut().enumerate() {
                            for (z, a) in acc.iter_mut().enumerate() {
                                // SAFETY: the residual holds vector v0 + z of channel k's row,
                                // as `y` does.
                                *a = $add(*a, unsafe { $loadu(r.add(k * self.plane + (self.v0 + z) * $lanes)) });
                            }
                        }
                    }
                    if stride == 1 {
                        // Each tap reads from its place's start in its channel's plane; the
                        // place says which vectors of the part read inside the image.
                        let (all, plane, kw) = ((1u32 << N) - 1, h * wd * w, g.window.kernel[1]);
                        for (c, ky, kx, values) in taps {
                            let place = self.places[ky * kw + kx];
                            let inside = (place.inside >> self.part) & all;
                            if inside == 0 {
                                continue;
                            }
                            let weights: [$vec; K] = std::array::from_fn(|k| $set1(values[k]));
                            let start = place.start + (c * plane + self.part * $lanes) as isize;
                            if inside == all {
                                // SAFETY: every vector of the part reads inside row iy of
                                // channel c (Place::fill), so the span is inside `x`.
                                let src = unsafe { xp.offset(start) };
                                for z in 0..N {
                                    let v = unsafe { $loadu(src.add($lanes * z)) };
                                    for (a, weight) in acc.iter_mut().zip(&weights) {
                                        a[z] = $fmadd(*weight, v, a[z]);
                                    }
                                }
                                continue;
                            }
                            for z in 0..N {
                                if inside >> z & 1 == 1 {
                                    // SAFETY: vector z reads a pixel of channel c inside `x`.
                                    let v = unsafe { $loadu(xp.offset(start + ($lanes * z) as isize)) };
                                    for (a, weight) in acc.iter_mut().zip(&weights) {
                                        a[z] = $fmadd(*weight, v, a[z]);
                                    }
                                }
                            }
                        }
                        // SAFETY: the caller's contract, as this function's.
                        unsafe { self.$store(acc) };
                        return;
                    }
                    for (c, ky, kx, values) in taps {
                        let Some(iy) = g.source(0, self.oy, ky) else { continue };
                        let weights: [$vec; K] = std::array::from_fn(|k| $set1(values[k]));
                        let row = (c * h + iy) * wd * w;
                        let input = |ox: usize| (ox * stride + kx * dilation).checked_sub(pad).filter(|&p| p < wd);
                        if stride == 1
                            && let (Some(ix0), Some(_)) = (input(pos[0].0), input(pos[N - 1].0))
                        {
                            // Every vector reads inside the image, from one contiguous span.
                            // SAFETY: the span ends inside row (c, iy) of `x`.
                            let src = unsafe { xp.add(row + ix0 * w + pos[0].1) };
                            for z in 0..N {
                                let v = unsafe { $loadu(src.add($lanes * z)) };
                                for (a, weight) in acc.iter_mut().zip(&weights) {
                                    a[z] = $fmadd(*weight, v, a[z]);
                                }
                            }
                            continue;
                        }
                        for (z, &(ox, s)) in pos.iter().enumerate() {
                            let Some(ix) = input(ox) else { continue };
                            // SAFETY: (c, iy, ix) is a pixel of `x` and s + lanes <= w.
                            let v = unsafe { $loadu(xp.add(row + ix * w + s)) };
                            for (a, weight) in acc.iter_mut().zip(&weights) {
                                a[z] = $fmadd(*weight, v, a[z]);
                            }
                        }
                    }
                    // SAFETY: the caller's contract, as this function's.
                    unsafe { self.$store(acc) };
                }

                /// The accumulators of channels `K`, vectors `N`, into the output rows (ReLU
                /// applied if asked).
                ///
                /// # Safety
                /// As `$go`.
                #[inline]
                #[target_feature(enable = $feature)]
                unsafe fn $store<const K: usize, const N: usize>(&self, acc: [[$vec; N]; K]) {
                    for (k, acc) in acc.iter().enumerate() {
                        for (z, a) in acc.iter().enumerate() {
                            let v = if self.relu { $max(*a, $zero()) } else { *a };
                            // SAFETY: vector v0 + z of channel k's row is inside `y` (the caller's
                            // contract).
                            unsafe { $storeu(self.y.add(k * self.plane + (self.v0 + z) * $lanes), v) };
                        }
                    }
                }
            }
        };
    }

    direct_kernel!(
        conv_direct_avx512,
        go16,
        store16,
        "avx512f",
        16,
        CHUNK512,
        // One match arm per chunk length, 1..=CHUNK512.
        [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16],
        6,
        __m512,
        _mm512_set1_ps,
        _mm512_fmadd_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_add_ps,
        _mm512_max_ps,
        _mm512_setzero_ps
    );
    direct_kernel!(
        conv_direct_avx2,
        go8,
        store8,
        "avx2,fma",
        8,
        8,
        [1 2 3 4 5 6 7 8],
        2,
        __m256,
        _mm256_set1_ps,
        _mm256_fmadd_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_max_ps,
        _mm256_setzero_ps
    );
}
