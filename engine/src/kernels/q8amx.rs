//! Int8 linear layers and convolutions (on their quantized im2col columns) on AMX tiles (Intel
//! Advanced Matrix Extensions, Sapphire Rapids and later):
//! the weights dense, in 16 x 64 tiles, multiplied by the quantized activations with `tdpbsud`
//! (16 x 16 x 64 multiply-adds per instruction, about eight times what AVX-512 VNNI does per
//! cycle). On a CPU with AMX a 90% sparse layer runs faster dense here than sparse on VNNI, whose
//! unstructured groups of four hold 1.3-1.5 non-zeros (see BENCHMARKS.md); the compiler times both
//! on each layer and keeps the faster.
//!
//! The activations need no repacking: a tile of the grouped layout (`q8`: feature `f` of sample
//! `s` at `((f / 4) * ld + s) * 4 + f % 4`) is exactly AMX's second operand, sixteen groups of
//! four features as rows, sixteen samples of four bytes each per row, `ld * 4` bytes apart. The
//! weights are the first operand: 16 output rows of 64 consecutive inputs. The int32 sums go
//! through the same dequantization (and requantization) as the VNNI kernel's.
//!
//! The scalar twin is `q8::spmm_q8_ref_into` on the same weights.

use std::ops::Range;

use super::Isa;
use super::q8::{Dequant, Output};

/// Output rows per tile.
const TILE_ROWS: usize = 16;
/// Inputs per tile (64 bytes a row).
const TILE_K: usize = 64;

/// One 64-byte row of a tile, on a cache line of its own: a tile row across two lines makes
/// every `tileloadd` of it read both. (The weights had been a plain `Vec<i8>`, whose start moves
/// with the allocator: 16 bytes past a page for allocations of over 128 KB, so every row of
/// LeNet-300-100's `fc1` split. The int8 model on tiles at 64 samples, one thread, six
/// alternating rounds against that layout: 0.0675 -> 0.0522 ms, faster in every round.)
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
struct Line<T>([T; TILE_K]);

/// Int8 weights `[rows, cols]`, zero-padded to whole 16 x 64 tiles and stored tile by tile:
/// tile `(mt, kt)` holds rows `16 mt..` and columns `64 kt..`, one line a row, in lines
/// `(mt * k_tiles + kt) * 16..`.
#[derive(Debug, Clone)]
pub struct TileMatrix {
    pub rows: usize,
    pub cols: usize,
    m_tiles: usize,
    k_tiles: usize,
    data: Vec<Line<i8>>,
}

impl TileMatrix {
    /// Packs row-major int8 values of shape `[rows, cols]`.
    pub fn from_int8(values: &[i8], rows: usize, cols: usize) -> TileMatrix {
        assert_eq!(values.len(), rows * cols, "int8 weight does not match its shape");
        let (m_tiles, k_tiles) = (rows.div_ceil(TILE_ROWS), cols.div_ceil(TILE_K).max(1));
        let mut data = vec![Line([0i8; TILE_K]); m_tiles * k_tiles * TILE_ROWS];
        for r in 0..rows {
            for (c, &v) in values[r * cols..(r + 1) * cols].iter().enumerate() {
                let tile = (r / TILE_ROWS) * k_tiles + c / TILE_K;
                data[tile * TILE_ROWS + r % TILE_ROWS].0[c % TILE_K] = v;
            }
        }
        TileMatrix { rows, cols, m_tiles, k_tiles, data }
    }

    pub fn bytes(&self) -> usize {
        self.data.len() * TILE_K
    }

    /// Rows `0..rows` cut into about `parts` ranges of whole tiles (the last one ends at `rows`).
    pub fn row_parts(&self, parts: usize) -> Vec<Range<usize>> {
        let per = self.m_tiles.div_ceil(parts.max(1)).max(1) * TILE_ROWS;
        (0..self.rows).step_by(per).map(|r| r..(r + per).min(self.rows)).collect()
    }
}

/// Whether this CPU and OS run AMX int8 tiles at `isa` (AVX-512 is needed for the epilogue).
/// The first call asks Linux for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which a
/// process must do once before its first tile instruction.
pub fn available(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    return isa == Isa::Avx512 && x86::permitted();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn check(m: &TileMatrix, x: &[u8], ld: usize, out: &Output, rows: &Range<usize>, d: &Dequant) {
    assert!(ld >= 1 && rows.end <= m.rows, "row range does not fit the matrix");
    assert!(d.bias.len() == m.rows && d.mult.len() == m.rows && d.zero_corr.len() == m.rows, "dequantization does not fit");
    assert!(x.len() >= super::q8::quantized_len(m.cols, ld), "quantized input too small");
    out.check(rows, m.rows, ld);
}

/// `dequant(W x)` for the rows in `rows` of a quantized `[cols / 4, ld, 4]` tile, written as
/// `out` says (as `q8::spmm_q8_into`). Panics unless `available(Isa::Avx512)`.
#[allow(unused_mut)] // used on x86-64 only
pub fn matmul_into(m: &TileMatrix, x: &[u8], ld: usize, mut out: Output, rows: Range<usize>, d: &Dequant) {
    check(m, x, ld, &out, &rows, d);
    assert!(available(Isa::Avx512), "AMX tiles are not available on this CPU");
    #[cfg(target_arch = "x86_64")]
    // SAFETY: sizes checked above; AMX and AVX-512 are present and the tile state is permitted.
    unsafe {
        x86::matmul_amx(m, x, ld, &mut out, rows, d)
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::ops::Range;
    use std::sync::OnceLock;

    use super::{Dequant, Line, Output, TILE_K, TILE_ROWS, TileMatrix};
    use crate::kernels::q8::emit16;

    /// Asks Linux for the tile state (once per process, before the first tile instruction).
    #[cfg(target_os = "linux")]
    fn request_tile_state() -> bool {
        /// `arch_prctl` request and the tile data feature number (Linux `asm/prctl.h`).
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// Other systems: tiles are not used.
    #[cfg(not(target_os = "linux"))]
    fn request_tile_state() -> bool {
        false
    }

    /// CPUID leaf 7 EDX bits: AMX-TILE and AMX-INT8.
    const AMX_TILE: u32 = 1 << 24;
    const AMX_INT8: u32 = 1 << 25;

    pub fn permitted() -> bool {
        static PERMITTED: OnceLock<bool> = OnceLock::new();
        *PERMITTED.get_or_init(|| {
            let edx = __cpuid_count(7, 0).edx;
            edx & AMX_TILE != 0 && edx & AMX_INT8 != 0 && is_x86_feature_detected!("avx512f") && request_tile_state()
        })
    }

    /// The tile configuration (palette 1): eight tiles of 16 rows of 64 bytes. Tiles 0-3 are the
    /// int32 sums of two row tiles by two sample tiles, 4-5 weights, 6-7 activations.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = {
        let (mut colsb, mut rows) = ([0u16; 16], [0u8; 16]);
        let mut t = 0;
        while t < 8 {
            colsb[t] = 64;
            rows[t] = 16;
            t += 1;
        }
        TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb, rows }
    };

    /// 16 rows of 16 int32 sums, as a tile store writes them.
    #[repr(C, align(64))]
    struct Sums([[i32; 16]; 16]);

    /// Blocks of 32 output rows by 32 samples (four sum tiles), every input tile read once per
    /// block; a block at the end of the rows or samples uses the tiles it has. Samples past `ld`
    /// in a tile read the next row's bytes and are not written out; input tiles that would read
    /// past the end of `x` (the last one, or all of them for tiles under 16 samples) read a
    /// zero-padded copy instead.
    ///
    /// # Safety
    /// AVX-512F, AMX-TILE and AMX-INT8 with the tile state permitted; sizes as `super::check`
    /// verifies.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn matmul_amx(m: &TileMatrix, x: &[u8], ld: usize, out: &mut Output, rows: Range<usize>, d: &Dequant) {
        let groups = m.cols.div_ceil(4);
        // Input tiles from `copied` on read a copy of their rows, `padded` samples a row.
        let padded = ld.next_multiple_of(16);
        let copied = if ld < 16 { 0 } else { m.k_tiles - 1 };
        // Whole lines (`padded * 4` bytes a row is a multiple of 64), so its rows start on lines.
        let mut lines = vec![Line([0u8; TILE_K]); (m.k_tiles - copied) * TILE_ROWS * padded * 4 / TILE_K];
        // SAFETY: `Line<u8>` is 64 plain bytes (`repr(C)`, no padding), so the lines are one
        // byte slice of 64 times their count.
        let copy: &mut [u8] = unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * TILE_K) };
        for g in TILE_ROWS * copied..groups {
            let row = (g - TILE_ROWS * copied) * padded * 4;
            copy[row..row + ld * 4].copy_from_slice(&x[g * ld * 4..(g + 1) * ld * 4]);
        }
        let (r0, n_rows) = (rows.start, m.rows);
        let tiles = rows.start / TILE_ROWS..rows.end.div_ceil(TILE_ROWS);
        let mut sums = [Sums([[0; 16]; 16]), Sums([[0; 16]; 16])];
        // SAFETY (for every tile instruction below): the configuration makes every tile 16 rows
        // of 64 bytes. Weight tiles lie inside `m.data` (mt < m_tiles, kt < k_tiles). An input
        // tile kt < copied (so ld >= 16) reads rows below 16 * copied <= groups - 1 from sample
        // s0 < ld (a multiple of 16): at most s0 + 16 <= ld + 15 < 2 * ld samples from the row's
        // start, inside the next row; the second sample tile (s0 + 16 < ld) ends at s0 + 32 <
        // 2 * ld likewise. Copied tiles have `padded` samples a row, at least s0 + 16 (s0 + 32
        // for the second sample tile). Stores go to `sums`.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
            let (stride, copy_stride) = (ld * 4, padded * 4);
            for s0 in (0..ld).step_by(32) {
                let two_samples = s0 + 16 < ld;
                for mt in tiles.clone().step_by(2) {
                    let two_rows = mt + 1 < tiles.end;
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                    for kt in 0..m.k_tiles {
                        let (b, bs) = if kt >= copied {
                            (copy.as_ptr().add(((kt - copied) * TILE_ROWS * padded + s0) * 4), copy_stride)
                        } else {
                            (x.as_ptr().add((TILE_ROWS * kt * ld + s0) * 4), stride)
                        };
                        let a: *const i8 = m.data.as_ptr().add((mt * m.k_tiles + kt) * TILE_ROWS).cast();
                        asm!("tileloadd tmm4, [{a} + {s}*1]", "tileloadd tmm6, [{b} + {bs}*1]", "tdpbsud tmm0, tmm4, tmm6",
                            a = in(reg) a, b = in(reg) b, s = in(reg) TILE_K, bs = in(reg) bs, options(nostack, readonly));
                        if two_samples {
                            asm!("tileloadd tmm7, [{b} + {bs}*1]", "tdpbsud tmm1, tmm4, tmm7",
                                b = in(reg) b.add(64), bs = in(reg) bs, options(nostack, readonly));
                        }
                        if two_rows {
                            asm!("tileloadd tmm5, [{a} + {s}*1]", "tdpbsud tmm2, tmm5, tmm6",
                                a = in(reg) a.add(m.k_tiles * TILE_ROWS * TILE_K), s = in(reg) TILE_K, options(nostack, readonly));
                            if two_samples {
                                asm!("tdpbsud tmm3, tmm5, tmm7", options(nostack, nomem));
                            }
                        }
                    }
                    let masks = [0, 1].map(|i| {
                        let n = ld.saturating_sub(s0 + 16 * i).min(16);
                        if n == 16 { 0xffff } else { ((1u32 << n) - 1) as __mmask16 }
                    });
                    for (half, tile) in [(0, mt), (1, mt + 1)] {
                        if half == 1 && !two_rows {
                            break;
                        }
                        let [lo, hi] = &mut sums;
                        if half == 0 {
                            asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) lo.0.as_mut_ptr(), s = in(reg) 64usize, options(nostack));
                            asm!("tilestored [{c} + {s}*1], tmm1", c = in(reg) hi.0.as_mut_ptr(), s = in(reg) 64usize, options(nostack));
                        } else {
                            asm!("tilestored [{c} + {s}*1], tmm2", c = in(reg) lo.0.as_mut_ptr(), s = in(reg) 64usize, options(nostack));
                            asm!("tilestored [{c} + {s}*1], tmm3", c = in(reg) hi.0.as_mut_ptr(), s = in(reg) 64usize, options(nostack));
                        }
                        let mut words = [_mm512_setzero_si512(); 2];
                        for r in 0..TILE_ROWS {
                            let o = tile * TILE_ROWS + r;
                            if o < rows.start || o >= rows.end {
                                continue;
                            }
                            for (i, word) in words.iter_mut().enumerate().take(1 + two_samples as usize) {
                                let acc = _mm512_load_si512(sums[i].0[r].as_ptr() as *const _);
                                emit16(out, d, o, r0, n_rows, ld, s0 + 16 * i, acc, masks[i], word);
                            }
                        }
                    }
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}
