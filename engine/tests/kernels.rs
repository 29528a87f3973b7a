//! Every kernel variant this CPU supports against its scalar twin, over the edge shapes of
//! XNNPACK's checklist (rows fewer than the tile, k = 0, empty rows, 0/50/100% sparsity, widths
//! around the vector and strip sizes) and random ones. Tolerance for f32: 1e-5 relative to the
//! magnitude of the sum.

use engine::kernels::bcsr::{self, Bcsr};
use engine::kernels::csr::Csr;
use engine::kernels::kblocked::{self, KBlocked};
use engine::kernels::spmm::{Ld, Sums};
use engine::kernels::window::{self, Geometry};
use engine::kernels::{Isa, dense, elementwise, spmm, spmv};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The instruction-set levels to test every kernel at: all the CPU offers (each lower one too);
/// the levels it lacks are recorded as skipped, so a run on a smaller CPU says what it missed.
fn variants() -> Vec<Isa> {
    let levels = Isa::available();
    for (isa, name) in [(Isa::Avx2, "AVX2"), (Isa::Avx512, "AVX-512")] {
        if !levels.contains(&isa) {
            engine::testing::record_skip(&format!("the {name} kernel variants (this CPU, or ENGINE_ISA, stops below {name})"));
        }
    }
    levels
}

fn matrix(rows: usize, cols: usize, sparsity: f64, rng: &mut StdRng) -> Vec<f32> {
    (0..rows * cols).map(|_| if rng.random_bool(sparsity) { 0.0 } else { rng.random_range(-1.0..1.0f32) }).collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        // NaN marks an element the kernel must leave alone (a gap between strided rows).
        if w.is_nan() {
            assert!(g.is_nan(), "{what}: element {i} was written");
            continue;
        }
        let tol = 1e-5 * (1.0 + w.abs()) * 8.0;
        assert!((g - w).abs() <= tol, "{what}: element {i}: got {g}, want {w}");
    }
}

/// (rows, cols, width, sparsity) cases: the edge shapes, then random ones.
fn cases() -> Vec<(usize, usize, usize, f64)> {
    let mut v = vec![];
    for &(rows, cols) in &[(1, 1), (3, 5), (4, 0), (17, 33), (64, 64), (130, 70)] {
        for &w in &[1, 2, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 130] {
            for &s in &[0.0, 0.5, 0.9, 1.0] {
                v.push((rows, cols, w, s));
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(99);
    for _ in 0..40 {
        v.push((rng.random_range(1..200), rng.random_range(0..300), rng.random_range(1..200), rng.random_range(0.0..1.0)));
    }
    v
}

#[test]
fn spmm_variants_match_the_scalar_twin() {
    let mut rng = StdRng::seed_from_u64(1);
    for (rows, cols, w, s) in cases() {
        let m = Csr::from_dense(&matrix(rows, cols, s, &mut rng), rows, cols);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-2.0..2.0)).collect();
        for relu in [false, true] {
            let mut want = vec![0.0; rows * w];
            spmm::spmm_ref(&m, &bias, &x, w, &mut want, 0..rows, relu);
            for isa in variants() {
                let mut got = vec![f32::NAN; rows * w];
                spmm::spmm(isa, &m, &bias, &x, w, &mut got, 0..rows, relu);
                assert_close(&got, &want, &format!("spmm {} {rows}x{cols} w={w} s={s}", isa.name()));
                // A sub-range of rows writes only its own rows.
                if rows > 2 {
                    let mut part = vec![0.0; (rows - 2) * w];
                    spmm::spmm(isa, &m, &bias, &x, w, &mut part, 1..rows - 1, relu);
                    assert_close(&part, &want[w..(rows - 1) * w], "spmm row range");
                }
            }
        }
    }
}

#[test]
fn column_blocked_spmm_matches_plain_spmm() {
    let mut rng = StdRng::seed_from_u64(5);
    for (rows, cols, w, s) in cases() {
        let m = Csr::from_dense(&matrix(rows, cols, s, &mut rng), rows, cols);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        // Rows of the input and output lie 3 floats further apart than the width (a band of
        // rows inside whole images), so the strided form is checked as well as packed tiles.
        for ld in [Ld::packed(w), Ld { x: w + 3, y: w + 5 }] {
            let x: Vec<f32> = (0..cols * ld.x).map(|_| rng.random_range(-2.0..2.0)).collect();
            let mut want = vec![0.0; rows * ld.y];
            spmm::spmm_strided_ref(&m, &bias, &x, w, &mut want, 0..rows, Sums::new(ld, true));
            for kc in [1, 7, 64, 128] {
                let kb = KBlocked::from_csr(&m, kc);
                let mut got = want.clone();
                got.iter_mut().enumerate().filter(|(i, _)| i % ld.y < w).for_each(|(_, v)| *v = f32::NAN);
                kblocked::spmm_kblocked_ref(&kb, &bias, &x, w, &mut got, 0..rows, Sums::new(ld, true));
                assert_close(&got, &want, &format!("kblocked ref kc={kc} {rows}x{cols} w={w} {ld:?}"));
                for isa in variants() {
                    let mut got = want.clone();
                    got.iter_mut().enumerate().filter(|(i, _)| i % ld.y < w).for_each(|(_, v)| *v = f32::NAN);
                    kblocked::spmm_kblocked(isa, &kb, &bias, &x, w, &mut got, 0..rows, Sums::new(ld, true));
                    assert_close(&got, &want, &format!("kblocked {} kc={kc} {rows}x{cols} w={w} s={s} {ld:?}", isa.name()));
                    // A sub-range of rows writes only its own rows.
                    if rows > 2 {
                        let mut part = vec![0.0; (rows - 2) * ld.y];
                        kblocked::spmm_kblocked(isa, &kb, &bias, &x, w, &mut part, 1..rows - 1, Sums::new(ld, true));
                        let rows_of = |v: &[f32]| v.chunks(ld.y).map(|r| r[..w].to_vec()).collect::<Vec<_>>().concat();
                        assert_close(&rows_of(&part), &rows_of(&want[ld.y..(rows - 1) * ld.y]), "kblocked row range");
                    }
                }
            }
        }
    }
}

/// A residual added by the sparse kernels (CSR, column-blocked and 4x1 blocks, every variant,
/// packed and strided rows, row sub-ranges) equals, bit for bit, the same kernel without it followed by the
/// addition and ReLU the engine ran before fusing them (`elementwise::add_fake_quantized`).
#[test]
fn residual_added_by_sparse_kernels_equals_the_separate_addition() {
    let mut rng = StdRng::seed_from_u64(8);
    for (rows, cols, w, s) in cases().into_iter().step_by(3).filter(|c| c.0 > 2) {
        let dense = matrix(rows, cols, s, &mut rng);
        let (m, b) = (Csr::from_dense(&dense, rows, cols), Bcsr::from_dense(&dense, rows, cols));
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        for ld in [Ld::packed(w), Ld { x: w + 3, y: w + 5 }] {
            let x: Vec<f32> = (0..cols * ld.x).map(|_| rng.random_range(-2.0..2.0)).collect();
            let residual: Vec<f32> = (0..rows * ld.y).map(|_| rng.random_range(-2.0..2.0)).collect();
            let kb = KBlocked::from_csr(&m, 7);
            // Output rows 1..rows-1: the residual's rows are the output's.
            let part = 1..rows - 1;
            let res = &residual[ld.y..];
            for isa in variants() {
                for relu in [false, true] {
                    let label = format!("{} {rows}x{cols} w={w} s={s} {ld:?} relu={relu}", isa.name());
                    let separate = |y: &[f32]| {
                        let mut want = y.to_vec();
                        for (i, (y, r)) in y.chunks(ld.y).zip(res.chunks(ld.y)).enumerate().take(part.len()) {
                            let at = i * ld.y;
                            elementwise::add_fake_quantized(isa, &y[..w], &r[..w], &mut want[at..at + w], relu, None);
                        }
                        want
                    };
                    let mut plain = vec![0.0; part.len() * ld.y];
                    spmm::spmm_strided(isa, &m, &bias, &x, w, &mut plain, part.clone(), Sums::new(ld, false));
                    let mut fused = vec![0.0; part.len() * ld.y];
                    spmm::spmm_strided(isa, &m, &bias, &x, w, &mut fused, part.clone(), Sums::new(ld, relu).with_residual(Some(res)));
                    assert!(fused == separate(&plain), "spmm residual {label}");
                    let mut plain = vec![0.0; part.len() * ld.y];
                    kblocked::spmm_kblocked(isa, &kb, &bias, &x, w, &mut plain, part.clone(), Sums::new(ld, false));
                    let mut fused = vec![0.0; part.len() * ld.y];
                    kblocked::spmm_kblocked(isa, &kb, &bias, &x, w, &mut fused, part.clone(), Sums::new(ld, relu).with_residual(Some(res)));
                    assert!(fused == separate(&plain), "kblocked residual {label}");
                    let mut plain = vec![0.0; part.len() * ld.y];
                    bcsr::spmm_bcsr(isa, &b, &bias, &x, w, &mut plain, part.clone(), Sums::new(ld, false));
                    let mut fused = vec![0.0; part.len() * ld.y];
                    bcsr::spmm_bcsr(isa, &b, &bias, &x, w, &mut fused, part.clone(), Sums::new(ld, relu).with_residual(Some(res)));
                    assert!(fused == separate(&plain), "bcsr residual {label}");
                }
            }
            // The scalar twins: the sums, then the residual, then the ReLU.
            let mut plain = vec![0.0; part.len() * ld.y];
            spmm::spmm_strided_ref(&m, &bias, &x, w, &mut plain, part.clone(), Sums::new(ld, false));
            let mut fused = vec![0.0; part.len() * ld.y];
            spmm::spmm_strided_ref(&m, &bias, &x, w, &mut fused, part.clone(), Sums::new(ld, true).with_residual(Some(res)));
            let mut fused_blocks = vec![0.0; part.len() * ld.y];
            kblocked::spmm_kblocked_ref(&kb, &bias, &x, w, &mut fused_blocks, part.clone(), Sums::new(ld, true).with_residual(Some(res)));
            for i in 0..part.len() {
                for c in 0..w {
                    let want = (plain[i * ld.y + c] + res[i * ld.y + c]).max(0.0);
                    assert!(fused[i * ld.y + c] == want, "spmm ref residual row {i} column {c}");
                    assert!((fused_blocks[i * ld.y + c] - want).abs() <= 1e-4 * (1.0 + want.abs()), "kblocked ref residual");
                }
            }
        }
    }
}

/// A clip clamped by the sparse kernels as they store (CSR, column-blocked and 4x1 blocks, every variant and
/// the scalar twins, packed and strided rows, with and without the ReLU, NaN sums included)
/// equals, bit for bit, the same kernel without it followed by `elementwise::clamp`, the fused
/// Clip's pass it replaces.
#[test]
fn clip_clamped_by_sparse_kernels_equals_the_separate_clamp() {
    let mut rng = StdRng::seed_from_u64(9);
    for (rows, cols, w, s) in cases().into_iter().step_by(3) {
        let dense = matrix(rows, cols, s, &mut rng);
        let (m, b) = (Csr::from_dense(&dense, rows, cols), Bcsr::from_dense(&dense, rows, cols));
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let kb = KBlocked::from_csr(&m, 7);
        for ld in [Ld::packed(w), Ld { x: w + 3, y: w + 5 }] {
            // Inputs of several units so that sums fall on both sides of both bounds, and a NaN.
            let mut x: Vec<f32> = (0..cols * ld.x).map(|_| rng.random_range(-4.0..4.0)).collect();
            if let Some(v) = x.get_mut(ld.x + 1) {
                *v = f32::NAN;
            }
            for [lo, hi] in [[0.0, 6.0], [-0.5, 0.25]] {
                let clamped = |y: &[f32]| y.iter().map(|&v| elementwise::clamp(v, lo, hi)).collect::<Vec<f32>>();
                for relu in [false, true] {
                    let sums = Sums::new(ld, relu);
                    let label = format!("{rows}x{cols} w={w} s={s} {ld:?} relu={relu} [{lo}, {hi}]");
                    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                    let run = |f: &dyn Fn(&mut [f32], Sums)| {
                        let (mut plain, mut fused) = (vec![0.0; rows * ld.y], vec![0.0; rows * ld.y]);
                        f(&mut plain, sums);
                        f(&mut fused, sums.with_clip(Some([lo, hi])));
                        (clamped(&plain), fused)
                    };
                    let (want, got) = run(&|y, sums| spmm::spmm_strided_ref(&m, &bias, &x, w, y, 0..rows, sums));
                    assert!(same(&want, &got), "spmm ref clip {label}");
                    let (want, got) = run(&|y, sums| kblocked::spmm_kblocked_ref(&kb, &bias, &x, w, y, 0..rows, sums));
                    assert!(same(&want, &got), "kblocked ref clip {label}");
                    let (want, got) = run(&|y, sums| bcsr::spmm_bcsr_ref(&b, &bias, &x, w, y, 0..rows, sums));
                    assert!(same(&want, &got), "bcsr ref clip {label}");
                    for isa in variants() {
                        let (want, got) = run(&|y, sums| bcsr::spmm_bcsr(isa, &b, &bias, &x, w, y, 0..rows, sums));
                        assert!(same(&want, &got), "bcsr clip {} {label}", isa.name());
                        let (want, got) = run(&|y, sums| spmm::spmm_strided(isa, &m, &bias, &x, w, y, 0..rows, sums));
                        assert!(same(&want, &got), "spmm clip {} {label}", isa.name());
                        let (want, got) = run(&|y, sums| kblocked::spmm_kblocked(isa, &kb, &bias, &x, w, y, 0..rows, sums));
                        assert!(same(&want, &got), "kblocked clip {} {label}", isa.name());
                    }
                }
            }
        }
    }
}

/// The 4x1-block kernel (scalar twin and every variant) against the CSR kernel's scalar twin on
/// the same weights: packed and strided rows, sums from the bias and accumulated onto `y`, and
/// row ranges that start and end inside a block, which write only their rows.
#[test]
fn blocked_4x1_matches_plain_spmm() {
    let mut rng = StdRng::seed_from_u64(6);
    for (rows, cols, w, s) in cases() {
        let dense = matrix(rows, cols, s, &mut rng);
        let m = Csr::from_dense(&dense, rows, cols);
        let b = Bcsr::from_dense(&dense, rows, cols);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        // Whole, and from inside the first block to inside the last.
        let parts = [0..rows, 1.min(rows)..rows.saturating_sub(2).max(1.min(rows))];
        for ld in [Ld::packed(w), Ld { x: w + 3, y: w + 5 }] {
            let x: Vec<f32> = (0..cols * ld.x).map(|_| rng.random_range(-2.0..2.0)).collect();
            let start: Vec<f32> = (0..rows * ld.y).map(|_| rng.random_range(-1.0..1.0)).collect();
            for accumulate in [false, true] {
                for part in parts.iter().cloned() {
                    let sums = Sums { accumulate, ..Sums::new(ld, true) };
                    // NaN between strided rows: elements the kernels must leave alone.
                    let mut initial = vec![f32::NAN; part.len() * ld.y];
                    for i in 0..part.len() {
                        let at = i * ld.y;
                        initial[at..at + w].copy_from_slice(&start[(part.start + i) * ld.y..(part.start + i) * ld.y + w]);
                    }
                    let mut want = initial.clone();
                    spmm::spmm_strided_ref(&m, &bias, &x, w, &mut want, part.clone(), sums);
                    let label = format!("{rows}x{cols} w={w} s={s} {ld:?} accumulate={accumulate} rows {part:?}");
                    let mut got = initial.clone();
                    bcsr::spmm_bcsr_ref(&b, &bias, &x, w, &mut got, part.clone(), sums);
                    assert_close(&got, &want, &format!("bcsr ref {label}"));
                    for isa in variants() {
                        let mut got = initial.clone();
                        bcsr::spmm_bcsr(isa, &b, &bias, &x, w, &mut got, part.clone(), sums);
                        assert_close(&got, &want, &format!("bcsr {} {label}", isa.name()));
                    }
                }
            }
        }
    }
}

#[test]
fn spmv_variants_match_the_scalar_twin() {
    let mut rng = StdRng::seed_from_u64(2);
    for (rows, cols, _, s) in cases() {
        let m = Csr::from_dense(&matrix(rows, cols, s, &mut rng), rows, cols);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..cols).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut want = vec![0.0; rows];
        spmv::spmv_ref(&m, &bias, &x, &mut want, 0..rows, true);
        for m in [m.clone(), m.with_narrow_columns()] {
            for isa in variants() {
                let mut got = vec![f32::NAN; rows];
                spmv::spmv(isa, &m, &bias, &x, &mut got, 0..rows, true);
                let width = if m.col16.is_some() { 16 } else { 32 };
                assert_close(&got, &want, &format!("spmv {} {width}-bit indices {rows}x{cols} s={s}", isa.name()));
            }
        }
    }
}

#[test]
fn narrow_columns_only_where_every_index_fits_in_16_bits() {
    for (cols, fits) in [(1 << 16, true), ((1 << 16) + 1, false)] {
        let mut dense = vec![0.0f32; 2 * cols];
        dense[cols - 1] = 2.0; // the last column of row 0
        dense[cols] = 3.0; // the first column of row 1
        let m = Csr::from_dense(&dense, 2, cols).with_narrow_columns();
        assert_eq!(m.col16.is_some(), fits, "cols = {cols}");
        let x: Vec<f32> = (0..cols).map(|i| i as f32).collect();
        for isa in variants() {
            let mut y = [0.0f32; 2];
            spmv::spmv(isa, &m, &[0.5, 0.0], &x, &mut y, 0..2, false);
            assert_eq!(y, [0.5 + 2.0 * (cols - 1) as f32, 0.0], "{} cols = {cols}", isa.name());
        }
    }
}

#[test]
fn dense_matches_the_scalar_twin_and_sparse() {
    let mut rng = StdRng::seed_from_u64(3);
    for (rows, cols, w, s) in cases().into_iter().step_by(3) {
        let wt = matrix(rows, cols, s, &mut rng);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut want = vec![0.0; rows * w];
        dense::dense_ref(&wt, rows, cols, &bias, &x, w, &mut want, true);
        let mut sparse = vec![0.0; rows * w];
        spmm::spmm_ref(&Csr::from_dense(&wt, rows, cols), &bias, &x, w, &mut sparse, 0..rows, true);
        assert_close(&sparse, &want, "sparse vs dense reference");
        for isa in variants() {
            let mut got = vec![f32::NAN; rows * w];
            dense::dense(isa, &wt, rows, cols, &bias, &x, w, &mut got, true);
            assert_close(&got, &want, &format!("dense {} {rows}x{cols} w={w}", isa.name()));
        }
    }
}

/// `[rows, w]` packed values placed `ld` apart in a buffer of NaNs (with `pad` more at the end).
fn spread(packed: &[f32], rows: usize, w: usize, ld: usize, pad: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; rows.saturating_sub(1) * ld + w * usize::from(rows > 0) + pad];
    for r in 0..rows {
        out[r * ld..r * ld + w].copy_from_slice(&packed[r * w..(r + 1) * w]);
    }
    out
}

#[test]
fn strided_dense_and_sparse_match_the_packed_twins() {
    let mut rng = StdRng::seed_from_u64(6);
    for (rows, cols, w, s) in cases().into_iter().step_by(5).filter(|c| c.2 >= 2) {
        let wt = matrix(rows, cols, s, &mut rng);
        let m = Csr::from_dense(&wt, rows, cols);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut want = vec![0.0; rows * w];
        dense::dense_ref(&wt, rows, cols, &bias, &x, w, &mut want, true);
        // Rows 3 and 40 values apart beyond the width, as a band of rows inside whole images.
        for extra in [0, 3, 40] {
            let ld = spmm::Ld { x: w + extra, y: w + 2 * extra };
            let xs = spread(&x, cols, w, ld.x, 0);
            for isa in variants() {
                let mut got = spread(&vec![0.0; rows * w], rows, w, ld.y, 0);
                spmm::spmm_strided(isa, &m, &bias, &xs, w, &mut got, 0..rows, Sums::new(ld, true));
                let label = format!("{} {rows}x{cols} w={w} s={s} ld={ld:?}", isa.name());
                assert_close(&got, &spread(&want, rows, w, ld.y, 0), &format!("strided spmm {label}"));
                let mut got = spread(&vec![0.0; rows * w], rows, w, ld.y, 0);
                dense::dense_strided(isa, &wt, rows, cols, &bias, &xs, w, &mut got, true, ld);
                assert_close(&got, &spread(&want, rows, w, ld.y, 0), &format!("strided dense {label}"));
            }
        }
    }
}

#[test]
fn dense_by_columns_matches_the_scalar_twin() {
    let mut rng = StdRng::seed_from_u64(5);
    let team = engine::team::Team::new(3).expect("a thread team");
    // Column counts below, at and past whole vectors per part; rows 1 (a single channel) to 64.
    for (rows, cols, w) in [(1, 5, 1), (3, 7, 17), (64, 27, 100), (16, 147, 513), (5, 1, 48)] {
        let wt = matrix(rows, cols, 0.0, &mut rng);
        let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut want = vec![0.0; rows * w];
        dense::dense_ref(&wt, rows, cols, &bias, &x, w, &mut want, true);
        for isa in variants() {
            for parts in [1, 2, 3, 7] {
                let mut got = vec![f32::NAN; rows * w];
                // The team runs one part per member; 7 parts run in turn on this thread.
                dense::dense_by_columns(isa, &wt, rows, cols, &bias, &x, w, &mut got, true, parts, |job| match parts {
                    7 => (0..parts).for_each(job),
                    _ => team.run_some(parts, job),
                });
                assert_close(&got, &want, &format!("dense by columns {} {rows}x{cols} w={w} parts={parts}", isa.name()));
            }
        }
    }
}

#[test]
fn unfolding_panels_from_the_image_equals_im2col() {
    use engine::graph::Window;
    let mut rng = StdRng::seed_from_u64(21);
    // (in channels, height, width, kernel, stride, pad, dilation): 3x3 at strides 1 and 2 (rows
    // of 7 and of a stem's odd width), a 7x7 stem, dilation, a 1x1 at stride 2, and padding
    // wider than the kernel reaches (rows of zeros).
    let shapes = [
        (3, 14, 14, 3, 1, 1, 1),
        (2, 9, 7, 3, 2, 1, 1),
        (2, 15, 13, 7, 2, 3, 1),
        (2, 8, 8, 3, 1, 2, 2),
        (5, 7, 7, 1, 2, 0, 1),
        (1, 4, 5, 3, 1, 3, 1),
    ];
    for &(cin, h, wd, k, stride, pad, dilation) in &shapes {
        let window = Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [dilation, dilation], ceil_mode: false };
        let (oh, ow) = window.output(h, wd, "t").unwrap();
        let taps = cin * k * k;
        for w in [1, 3, 8, 16] {
            let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w };
            let x: Vec<f32> = (0..cin * h * wd * w).map(|_| rng.random_range(-2.0..2.0)).collect();
            for rows in [0..oh, oh / 2..oh, 1.min(oh)..1.min(oh) + 1] {
                let band = rows.len() * ow * w;
                let mut cols = vec![0.0; taps * band];
                window::im2col_rows(&g, &x, rows.clone(), &mut cols);
                let image = window::Unfold::new(&g, &x, rows.clone());
                assert_eq!((image.taps(), image.columns()), (taps, band));
                // Strips at any start (a sample or a row boundary or neither) and of any length up
                // to a full one, taps from any of them.
                for _ in 0..20 {
                    let start = rng.random_range(0..band);
                    let len = rng.random_range(1..=(band - start).min(window::Unfold::MAX_STRIP));
                    let first = rng.random_range(0..taps);
                    let n = rng.random_range(1..=taps - first);
                    let row_len = len + 3;
                    let mut panel = vec![f32::NAN; n * row_len];
                    image.fill(first..first + n, start..start + len, &mut panel, row_len);
                    for r in 0..n {
                        let want = &cols[(first + r) * band + start..][..len];
                        assert_eq!(
                            &panel[r * row_len..][..len],
                            want,
                            "{cin}x{h}x{wd} k{k} s{stride} w={w} rows {rows:?} tap {}",
                            first + r
                        );
                    }
                }
                // The column-blocked kernel on the unfolded image against it on im2col, rows of
                // the output (and residual) a plane apart as in row bands.
                let out = 5;
                let m = Csr::from_dense(&matrix(out, taps, 0.6, &mut rng), out, taps);
                let bias: Vec<f32> = (0..out).map(|_| rng.random_range(-1.0..1.0)).collect();
                let ld = Ld { x: band, y: band + 7 };
                let residual: Vec<f32> = (0..out * ld.y).map(|_| rng.random_range(-1.0..1.0)).collect();
                for kc in [4, 128] {
                    let kb = KBlocked::from_csr(&m, kc);
                    for isa in variants() {
                        let sums = Sums::new(ld, true).with_residual(Some(&residual));
                        let mut want = vec![0.0; out * ld.y];
                        kblocked::spmm_kblocked(isa, &kb, &bias, &cols, band, &mut want, 0..out, sums);
                        let mut got = vec![0.0; out * ld.y];
                        kblocked::spmm_kblocked_unfolded(isa, &kb, &bias, &image, &mut got, 0..out, sums);
                        assert!(got == want, "unfolded kblocked {} kc={kc} {cin}x{h}x{wd} k{k} s{stride} w={w}", isa.name());
                    }
                }
            }
        }
    }
}

#[test]
fn winograd_convolution_matches_im2col_and_dense_gemm() {
    use engine::graph::Window;
    use engine::kernels::winograd::{self, Winograd};
    let mut rng = StdRng::seed_from_u64(29);
    // (in channels, out channels, height, width, pads top/left/bottom/right): odd sizes (a last
    // tile half outside), a 1x1 image under padding, no padding, uneven padding, rows not a
    // multiple of 8, more channels than tiles (split by channels), images of several chunks.
    let shapes = [
        (3, 5, 7, 7, [1, 1, 1, 1]),
        (13, 17, 14, 14, [1, 1, 1, 1]),
        (8, 8, 1, 1, [1, 1, 1, 1]),
        (4, 9, 5, 9, [0, 0, 0, 0]),
        (2, 3, 6, 11, [2, 1, 0, 2]),
        (16, 40, 6, 6, [1, 1, 1, 1]),
        (24, 32, 56, 56, [1, 1, 1, 1]),
        (70, 24, 28, 28, [1, 1, 1, 1]),
    ];
    for isa in variants() {
        for &(cin, cout, h, wd, pads) in &shapes {
            let window = Window { kernel: [3, 3], stride: [1, 1], pads, dilation: [1, 1], ceil_mode: false };
            let (oh, ow) = window.output(h, wd, "t").unwrap();
            let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w: 1 };
            assert!(winograd::applies(&g));
            let wt = matrix(cout, cin * 9, 0.2, &mut rng);
            let bias: Vec<f32> = (0..cout).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..cin * h * wd).map(|_| rng.random_range(-2.0..2.0)).collect();
            let residual: Vec<f32> = (0..cout * oh * ow).map(|_| rng.random_range(-2.0..2.0)).collect();
            let mut cols = vec![0.0; cin * 9 * oh * ow];
            window::im2col_rows(&g, &x, 0..oh, &mut cols);
            let mut sums = vec![0.0; cout * oh * ow];
            dense::dense_ref(&wt, cout, cin * 9, &bias, &cols, oh * ow, &mut sums, false);
            let wg = Winograd::new(&wt, cout, cin);
            for (parts, res, relu) in [(1, false, false), (2, true, true), (3, false, true), (2, true, false)] {
                let want: Vec<f32> = sums
                    .iter()
                    .zip(&residual)
                    .map(|(s, r)| if res { s + r } else { *s })
                    .map(|v| if relu { v.max(0.0) } else { v })
                    .collect();
                let mut y = vec![f32::NAN; cout * oh * ow];
                let mut scratch = vec![f32::NAN; wg.scratch_len(isa, &g, parts)];
                let run = |job: &(dyn Fn(usize) + Sync)| {
                    std::thread::scope(|s| {
                        for p in 0..parts {
                            s.spawn(move || job(p));
                        }
                    })
                };
                let residual = res.then_some(residual.as_slice());
                assert!(winograd::conv_winograd(isa, &wg, &bias, &g, &x, residual, &mut y, relu, &mut scratch, parts, run));
                assert_close(&y, &want, &format!("{isa:?} {cin}->{cout} {h}x{wd} pads {pads:?} parts {parts}"));
            }
            // A scratch space too small for two parts runs as one; one too small for one refuses.
            let one = wg.scratch_len(isa, &g, 1);
            let mut y = vec![0.0; cout * oh * ow];
            let mut scratch = vec![0.0; one];
            let run = |job: &(dyn Fn(usize) + Sync)| (0..2).for_each(job);
            assert!(winograd::conv_winograd(isa, &wg, &bias, &g, &x, None, &mut y, false, &mut scratch, 2, run));
            assert_close(&y, &sums, "one part in a small scratch space");
            let run = |job: &(dyn Fn(usize) + Sync)| (0..1).for_each(job);
            assert!(!winograd::conv_winograd(isa, &wg, &bias, &g, &x, None, &mut y, false, &mut scratch[..one - 1], 1, run));
        }
    }
}

#[test]
fn im2col_and_pooling_match_direct_definitions() {
    use engine::graph::Window;
    let mut rng = StdRng::seed_from_u64(4);
    let windows = [
        Window { kernel: [3, 2], stride: [2, 1], pads: [1, 0, 1, 1], dilation: [1, 2], ceil_mode: false },
        Window { kernel: [2, 2], stride: [2, 2], pads: [0; 4], dilation: [1, 1], ceil_mode: false },
        Window { kernel: [3, 3], stride: [1, 3], pads: [2, 3, 2, 3], dilation: [1, 1], ceil_mode: false },
        Window { kernel: [5, 5], stride: [1, 1], pads: [2; 4], dilation: [1, 1], ceil_mode: false },
    ];
    for window in windows {
        // One-sample rows of 41 pixels: several vectors of outputs per row, the last one partial.
        let cases = [(1, 6), (3, 6), (17, 6), (32, 6), (1, 41)];
        for ((w, wd), isa) in cases.into_iter().flat_map(|case| variants().into_iter().map(move |isa| (case, isa))) {
            let [kh, kw] = window.kernel;
            let (c, h) = (2, 5);
            let (oh, ow) = window.output(h, wd, "t").unwrap();
            let g = Geometry { channels: c, in_hw: [h, wd], out_hw: [oh, ow], window, w };
            let x: Vec<f32> = (0..c * h * wd * w).map(|_| rng.random_range(-1.0..1.0)).collect();
            let at = |ch: usize, y: isize, xx: isize, s: usize| -> Option<f32> {
                (y >= 0 && xx >= 0 && (y as usize) < h && (xx as usize) < wd).then(|| x[((ch * h + y as usize) * wd + xx as usize) * w + s])
            };
            let src = |o: usize, k: usize, axis: usize| {
                (o * window.stride[axis] + k * window.dilation[axis]) as isize - window.pads[axis] as isize
            };
            let mut cols = vec![f32::NAN; c * kh * kw * oh * ow * w];
            window::im2col(&g, &x, &mut cols);
            // The second channel's rows alone, as a thread of the team fills its part.
            let part = kh * kw * oh * ow * w;
            let mut second = vec![f32::NAN; part];
            window::im2col_channels(&g, &x, 0..oh, 1..2, &mut second);
            assert_eq!(second[..], cols[part..2 * part], "{window:?} w={w}: one channel's part");
            let mut maxp = vec![0.0; c * oh * ow * w];
            window::pool(isa, &g, &x, &mut maxp, None);
            let (mut avg_pad, mut avg_valid) = (vec![0.0; c * oh * ow * w], vec![0.0; c * oh * ow * w]);
            window::pool(isa, &g, &x, &mut avg_pad, Some(true));
            window::pool(isa, &g, &x, &mut avg_valid, Some(false));
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        for s in 0..w {
                            let mut vals = vec![];
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let v = at(ch, src(oy, ky, 0), src(ox, kx, 1), s);
                                    let row = (ch * kh + ky) * kw + kx;
                                    assert_eq!(cols[(row * oh * ow + oy * ow + ox) * w + s], v.unwrap_or(0.0), "{window:?} w={w}");
                                    vals.extend(v);
                                }
                            }
                            let i = ((ch * oh + oy) * ow + ox) * w + s;
                            let sum: f32 = vals.iter().sum();
                            assert_eq!(
                                maxp[i],
                                vals.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                                "{window:?} w={w} wd={wd} {}",
                                isa.name()
                            );
                            assert!((avg_pad[i] - sum / (kh * kw) as f32).abs() < 1e-6, "{window:?} w={w} wd={wd} {}", isa.name());
                            assert!(
                                (avg_valid[i] - sum / vals.len().max(1) as f32).abs() < 1e-6,
                                "{window:?} w={w} wd={wd} {}",
                                isa.name()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Random int8 weights with about `sparsity` zeros; with `blocks`, whole groups of 4 columns.
fn int8_matrix(rows: usize, cols: usize, sparsity: f64, blocks: bool, rng: &mut StdRng) -> Vec<i8> {
    let mut keep = true;
    (0..rows * cols)
        .map(|i| {
            if !blocks || (i % cols).is_multiple_of(4) {
                keep = !rng.random_bool(sparsity);
            }
            if keep { rng.random_range(-127..=127i8) } else { 0 }
        })
        .collect()
}

/// Int8 matrices whose input tile overflows L1 at 64 samples (LeNet-300-100's first layer), which
/// the kernel runs in 32-sample strips.
fn wide_int8_cases() -> Vec<(usize, usize, usize, f64)> {
    [32, 48, 49, 64, 96, 100, 130].into_iter().flat_map(|w| [(9, 784, w, 0.5), (13, 600, w, 0.9)]).collect()
}

#[test]
fn q8_kernels_match_the_scalar_twin_exactly_in_int32() {
    use engine::kernels::q8::{self, Dequant, Q8Matrix};
    let mut rng = StdRng::seed_from_u64(8);
    for (i, (rows, cols, w, s)) in cases().into_iter().chain(wide_int8_cases()).enumerate() {
        let values = int8_matrix(rows, cols, s, i % 2 == 0, &mut rng);
        let m = Q8Matrix::from_int8(&values, rows, cols);
        let (scale, zero) = (rng.random_range(0.005..0.05f32), rng.random_range(0..=255u8));
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut qx = vec![0u8; q8::quantized_len(cols, w)];
        q8::quantize_ref(&x, cols, w, scale, zero, &mut qx);
        for isa in variants() {
            let mut got = vec![7u8; qx.len()];
            q8::quantize(isa, &x, cols, w, scale, zero, &mut got);
            assert_eq!(got, qx, "quantize {} {cols}x{w}", isa.name());
        }
        // With and without a fused QuantizeLinear/DequantizeLinear pair on the outputs (a scale
        // at which some codes clamp).
        for (relu, fake_quant) in [(false, None), (true, None), (false, Some((0.004, 100))), (true, Some((0.003, 0)))] {
            let d = Dequant {
                bias: (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect(),
                mult: (0..rows).map(|_| rng.random_range(1e-4..1e-2)).collect(),
                zero_corr: m.row_sums.iter().map(|&r| r * zero as i32).collect(),
                relu,
                fake_quant,
            };
            let mut want = vec![0.0; rows * w];
            q8::spmm_q8_ref(&m, &qx, w, &mut want, 0..rows, &d);
            // The definition, from the dense int8 values.
            for o in 0..rows {
                for c in 0..w {
                    let acc: i32 =
                        (0..cols).map(|k| values[o * cols + k] as i32 * (qx[((k / 4) * w + c) * 4 + k % 4] as i32 - zero as i32)).sum();
                    let v = (acc as f32).mul_add(d.mult[o], d.bias[o]);
                    let v = if relu { v.max(0.0) } else { v };
                    let v = fake_quant.map_or(v, |(scale, zero)| q8::quantize_dequantize(v, scale, zero));
                    // A value within rounding of a half-way code may take the other code.
                    let tolerance = 1e-5 * (1.0 + v.abs()) + fake_quant.map_or(0.0, |(scale, _)| scale * 1.001);
                    assert!((want[o * w + c] - v).abs() <= tolerance, "reference {o},{c}: {} vs {v}", want[o * w + c]);
                }
            }
            for isa in variants() {
                let mut got = vec![f32::NAN; rows * w];
                q8::spmm_q8(isa, &m, &qx, w, &mut got, 0..rows, &d);
                assert_eq!(got, want, "q8 {} {rows}x{cols} w={w} s={s}", isa.name());
                if rows > 2 {
                    let mut part = vec![0.0; (rows - 2) * w];
                    q8::spmm_q8(isa, &m, &qx, w, &mut part, 1..rows - 1, &d);
                    assert_eq!(part[..], want[w..(rows - 1) * w], "q8 row range {}", isa.name());
                }
                // Rows `stride` apart (a band of each channel of an image): the same values, and
                // nothing written between the rows.
                if rows > 0 && w > 0 {
                    let stride = w + 5;
                    let mut strided = vec![f32::NAN; (rows - 1) * stride + w];
                    q8::spmm_q8_into(isa, &m, &qx, w, q8::Output::F32Rows { y: &mut strided, stride }, 0..rows, &d);
                    for o in 0..rows {
                        assert_eq!(strided[o * stride..o * stride + w], want[o * w..(o + 1) * w], "q8 strided rows {}", isa.name());
                        if o + 1 < rows {
                            assert!(strided[o * stride + w..(o + 1) * stride].iter().all(|v| v.is_nan()), "q8 wrote between rows");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn requantizing_kernels_equal_quantizing_their_f32_output() {
    use engine::kernels::q8::{self, Dequant, Output, Q8Matrix};
    let mut rng = StdRng::seed_from_u64(18);
    for (i, (rows, cols, w, s)) in cases().into_iter().chain(wide_int8_cases()).enumerate() {
        let m = Q8Matrix::from_int8(&int8_matrix(rows, cols, s, i % 2 == 0, &mut rng), rows, cols);
        let zero = rng.random_range(0..=255u8);
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut qx = vec![0u8; q8::quantized_len(cols, w)];
        q8::quantize_ref(&x, cols, w, 0.02, zero, &mut qx);
        let relu = i % 3 != 0;
        let d = Dequant {
            bias: (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect(),
            mult: (0..rows).map(|_| rng.random_range(1e-4..1e-2)).collect(),
            zero_corr: m.row_sums.iter().map(|&r| r * zero as i32).collect(),
            relu,
            fake_quant: (i % 4 == 1).then_some((0.005, 20)),
        };
        // The next layer's input quantization: a scale small enough that some codes clamp.
        let (next_scale, next_zero) = (rng.random_range(0.002..0.02f32), if relu { 0 } else { rng.random_range(0..=255u8) });
        let mut f32_out = vec![0.0; rows * w];
        q8::spmm_q8_ref(&m, &qx, w, &mut f32_out, 0..rows, &d);
        let mut want = vec![0u8; q8::quantized_len(rows, w)];
        q8::quantize_ref(&f32_out, rows, w, next_scale, next_zero, &mut want);
        let mut got = vec![7u8; want.len()];
        q8::spmm_q8_ref_into(&m, &qx, w, Output::quantized(&mut got, next_scale, next_zero), 0..rows, &d);
        assert_eq!(got, want, "requantizing reference {rows}x{cols} w={w}");
        for isa in variants() {
            let mut got = vec![7u8; want.len()];
            q8::spmm_q8_into(isa, &m, &qx, w, Output::quantized(&mut got, next_scale, next_zero), 0..rows, &d);
            assert_eq!(got, want, "requantizing q8 {} {rows}x{cols} w={w} s={s}", isa.name());
            if rows > 4 {
                // Whole groups of rows from the second group to the end.
                let mut part = vec![7u8; q8::quantized_len(rows - 4, w)];
                q8::spmm_q8_into(isa, &m, &qx, w, Output::quantized(&mut part, next_scale, next_zero), 4..rows, &d);
                assert_eq!(part[..], want[w * 4..], "requantizing q8 row range {} {rows}x{cols} w={w}", isa.name());
            }
        }
    }
}

#[test]
fn transpose_variants_match_the_scalar_twin() {
    use engine::kernels::transpose;
    let mut rng = StdRng::seed_from_u64(16);
    // (1, 785), (1, 10) and (36, 1) have unit strides on the one-row side: a plain copy.
    for &(rows, cols) in &[(0, 5), (1, 1), (3, 9), (8, 8), (9, 17), (64, 784), (70, 33), (16, 7), (1, 785), (1, 10), (36, 1)] {
        let (src_ld, dst_ld) = (cols + rows % 3, rows + cols % 5);
        let src: Vec<f32> = (0..rows * src_ld).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut want = vec![0.0; cols * dst_ld];
        transpose::transpose_ref(&src, rows, cols, src_ld, &mut want, dst_ld);
        for isa in variants() {
            let mut got = vec![0.0; cols * dst_ld];
            transpose::transpose(isa, &src, rows, cols, src_ld, &mut got, dst_ld);
            assert_eq!(got, want, "transpose {} {rows}x{cols}", isa.name());
        }
    }
}

/// Swaps of two axes (runs of `inner` moved whole, or transposes where it is 1), run in parts of
/// output rows as the executor splits them, copy what the gather by the same map copies.
#[test]
fn axis_swaps_in_parts_match_the_gather() {
    use engine::graph::Op;
    use engine::kernels::transpose;
    use engine::layout::{Swap, sources};
    let mut rng = StdRng::seed_from_u64(18);
    for (shape, perm) in [
        (vec![128, 768], vec![1, 0]),
        (vec![128, 12, 64], vec![1, 0, 2]),
        (vec![3, 9, 17], vec![0, 2, 1]),
        (vec![2, 5, 7, 3], vec![0, 2, 1, 3]),
        (vec![33, 2], vec![1, 0]),
    ] {
        let map = sources(&Op::Transpose { perm: perm.clone() }, &shape).unwrap();
        let s = Swap::of(&map).unwrap_or_else(|| panic!("{shape:?} by {perm:?} is a swap"));
        let x: Vec<f32> = (0..map.len()).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut want = vec![0.0; map.len()];
        elementwise::gather_rows(&map, &x, 1, &mut want);
        let row = s.rows * s.inner;
        for isa in variants() {
            for part in [1, 2, s.cols] {
                let mut got = vec![f32::NAN; map.len()];
                for (o, block) in got.chunks_mut(s.cols * row).enumerate() {
                    for (k, y) in block.chunks_mut(part * row).enumerate() {
                        transpose::swap_axes(isa, s, &x, o, k * part, y);
                    }
                }
                assert_eq!(got, want, "{shape:?} by {perm:?} in parts of {part} on {}", isa.name());
            }
        }
    }
}

#[test]
fn quantizing_samples_equals_transposing_then_quantizing() {
    use engine::kernels::{q8, transpose};
    let mut rng = StdRng::seed_from_u64(17);
    for &(k, w, ld) in &[(1, 1, 1), (5, 3, 3), (784, 64, 64), (30, 17, 32), (8, 16, 16), (13, 1, 1), (33, 48, 64), (3, 32, 32)] {
        let x: Vec<f32> = (0..k * w).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut t = vec![0.0; k * ld];
        transpose::transpose_ref(&x, w, k, k, &mut t, ld);
        let mut want = vec![0u8; q8::quantized_len(k, ld)];
        q8::quantize_ref(&t, k, ld, 0.03, 100, &mut want);
        for isa in variants() {
            let mut got = want.clone();
            (0..got.len()).filter(|i| (i / 4) % ld < w).for_each(|i| got[i] = 0);
            q8::quantize_samples(isa, &x, k, w, ld, 0.03, 100, &mut got);
            assert_eq!(got, want, "quantize_samples {} k={k} w={w} ld={ld}", isa.name());
        }
        let mut reference = want.clone();
        q8::quantize_samples_ref(&x, k, w, ld, 0.03, 100, &mut reference);
        assert_eq!(reference, want);
    }
}

#[test]
fn output_channels_with_taps_at_the_same_places_form_blocks() {
    use engine::graph::Window;
    use engine::kernels::direct::Taps;
    let mut rng = StdRng::seed_from_u64(20);
    let window = Window { kernel: [3, 3], stride: [1, 1], pads: [1; 4], dilation: [1, 1], ceil_mode: false };
    let g = Geometry { channels: 5, in_hw: [8, 8], out_hw: [8, 8], window, w: 1 };
    let cols = 5 * 9;
    // 10 output channels: two blocks of 4 and two channels alone.
    let dense = matrix(10, cols, 0.0, &mut rng);
    assert_eq!(Taps::new(&Csr::from_dense(&dense, 10, cols), &g).shared_blocks(), (2, 2));
    // Pruned in 4x1 blocks except one weight of channel 5 (block 1): only block 0 shares.
    let keep: Vec<bool> = (0..3 * cols).map(|_| rng.random_bool(0.3)).collect();
    let mut blocked: Vec<f32> =
        dense.iter().enumerate().map(|(i, &v)| if keep[(i / cols / 4) * cols + i % cols] { v } else { 0.0 }).collect();
    let first_kept = (0..cols).find(|&c| keep[cols + c]).expect("block 1 keeps a tap");
    blocked[5 * cols + first_kept] = 0.0;
    assert_eq!(Taps::new(&Csr::from_dense(&blocked, 10, cols), &g).shared_blocks(), (1, 2));
    // Unstructured: blocks almost never share.
    let sparse = matrix(10, cols, 0.7, &mut rng);
    assert_eq!(Taps::new(&Csr::from_dense(&sparse, 10, cols), &g).shared_blocks().0, 0);
}

#[test]
fn direct_convolution_matches_im2col_and_its_scalar_twin() {
    use engine::graph::Window;
    use engine::kernels::direct;
    let mut rng = StdRng::seed_from_u64(19);
    // (in channels, out channels, height, width, kernel, stride, pad, dilation)
    let shapes = [
        (1, 6, 28, 28, 5, 1, 2, 1),
        (6, 16, 14, 14, 5, 1, 0, 1),
        (3, 5, 9, 7, 3, 2, 1, 1),
        (4, 4, 8, 8, 3, 1, 2, 2),
        (2, 3, 5, 5, 1, 1, 0, 1),
        // Rows of several vectors at one sample (40 = 2 x 16 + 8, 150 = 9 x 16 + 6).
        (3, 4, 10, 40, 3, 1, 1, 1),
        (2, 3, 6, 150, 3, 1, 1, 1),
        // Dense layers run blocks of 4 output channels together at one sample: 7 vectors a row
        // (in parts of at most 6), 9 channels (two blocks and one left over).
        (3, 9, 7, 100, 3, 1, 1, 1),
        // Rows shorter than a vector (`flat`: several rows per vector, in chunks of rows): a
        // ResNet stage's 7x7, a 1-pixel image, more rows than one chunk holds, padding of 2.
        (8, 8, 7, 7, 3, 1, 1, 1),
        (3, 4, 1, 1, 3, 1, 1, 1),
        (5, 6, 17, 17, 3, 1, 1, 1),
        (2, 3, 3, 2, 3, 1, 2, 1),
        // Enough input channels that `flat` runs them in blocks (3 of them on 7x7, 2 on 14x14),
        // each output channel's sums carried across.
        (100, 6, 7, 7, 3, 1, 1, 1),
        (70, 5, 14, 14, 3, 1, 1, 1),
    ];
    for &(cin, cout, h, wd, k, stride, pad, dilation) in &shapes {
        let window = Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [dilation, dilation], ceil_mode: false };
        let out = |n: usize| (n + 2 * pad - dilation * (k - 1) - 1) / stride + 1;
        let (oh, ow) = (out(h), out(wd));
        for s in [0.0, 0.5, 0.9, 1.0] {
            let m = Csr::from_dense(&matrix(cout, cin * k * k, s, &mut rng), cout, cin * k * k);
            let bias: Vec<f32> = (0..cout).map(|_| rng.random_range(-1.0..1.0)).collect();
            for w in [1, 3, 8, 16, 24, 32, 48, 64] {
                let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w };
                let x: Vec<f32> = (0..cin * h * wd * w).map(|_| rng.random_range(-2.0..2.0)).collect();
                let mut cols = vec![0.0; cin * k * k * oh * ow * w];
                window::im2col(&g, &x, &mut cols);
                let mut want = vec![0.0; cout * oh * ow * w];
                spmm::spmm_ref(&m, &bias, &cols, oh * ow * w, &mut want, 0..cout, true);
                let mut got = vec![f32::NAN; want.len()];
                direct::conv_direct_ref(&m, &bias, &g, &x, &mut got, 0..cout, 0..oh, true, None);
                assert_close(&got, &want, &format!("direct ref {cin}->{cout} {h}x{wd} k{k} s{stride} w={w}"));
                for isa in variants() {
                    let mut got = vec![f32::NAN; want.len()];
                    direct::conv_direct(isa, &m, &bias, &g, &x, &mut got, 0..cout, 0..oh, true, None);
                    assert_close(&got, &want, &format!("direct {} {cin}->{cout} {h}x{wd} k{k} s{stride} w={w} s={s}", isa.name()));
                    // A residual added to the sums before the ReLU, on some rows: as the twin.
                    let residual: Vec<f32> = (0..want.len()).map(|_| rng.random_range(-2.0..2.0)).collect();
                    let rows = oh / 3..oh;
                    let mut twin = vec![5.0; want.len()];
                    direct::conv_direct_ref(&m, &bias, &g, &x, &mut twin, 0..cout, rows.clone(), true, Some(&residual));
                    let mut got = vec![5.0; want.len()];
                    direct::conv_direct(isa, &m, &bias, &g, &x, &mut got, 0..cout, rows, true, Some(&residual));
                    assert_close(&got, &twin, &format!("direct + residual {} {cin}->{cout} {h}x{wd} w={w}", isa.name()));
                    // Some channels, some rows: only those are written.
                    if cout > 2 && oh > 2 {
                        let plane = oh * ow * w;
                        let mut part = vec![7.0; (cout - 2) * plane];
                        direct::conv_direct(isa, &m, &bias, &g, &x, &mut part, 1..cout - 1, 1..oh - 1, false, None);
                        for c in 0..cout - 2 {
                            for oy in 0..oh {
                                let got = &part[(c * oh + oy) * ow * w..][..ow * w];
                                if oy == 0 || oy == oh - 1 {
                                    assert!(got.iter().all(|&v| v == 7.0), "rows outside the range are left alone");
                                    continue;
                                }
                                let mut raw = vec![0.0; ow * w];
                                let full = &want[((c + 1) * oh + oy) * ow * w..][..ow * w];
                                // `want` has ReLU applied; compare where it is positive.
                                raw.iter_mut().zip(got).for_each(|(r, g)| *r = g.max(0.0));
                                assert_close(&raw, full, "direct channel and row range");
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The one-sample direct kernel (stride 1 along rows, two output rows at a time) with row
/// strides and dilations of its own, kernel columns at every offset within a vector and beyond,
/// odd numbers of output rows and row ranges starting anywhere.
#[test]
fn one_sample_direct_convolution_with_row_strides_and_odd_row_counts() {
    use engine::graph::Window;
    use engine::kernels::direct;
    let mut rng = StdRng::seed_from_u64(23);
    let windows = [
        Window { kernel: [3, 3], stride: [2, 1], pads: [1, 1, 1, 1], dilation: [1, 1], ceil_mode: false },
        Window { kernel: [3, 2], stride: [1, 1], pads: [2, 0, 1, 1], dilation: [2, 1], ceil_mode: false },
        Window { kernel: [2, 3], stride: [3, 1], pads: [0, 1, 0, 2], dilation: [1, 2], ceil_mode: false },
        // Kernel columns up to 6 floats into a row, and 8 and 16 floats (a whole vector) in.
        Window { kernel: [2, 7], stride: [1, 1], pads: [1, 3, 0, 3], dilation: [1, 1], ceil_mode: false },
        Window { kernel: [1, 3], stride: [1, 1], pads: [0, 8, 0, 8], dilation: [1, 8], ceil_mode: false },
    ];
    for window in windows {
        for (cin, cout, h, wd) in [(3, 4, 9, 21), (2, 5, 12, 40)] {
            let (oh, ow) = window.output(h, wd, "t").unwrap();
            let [kh, kw] = window.kernel;
            let m = Csr::from_dense(&matrix(cout, cin * kh * kw, 0.6, &mut rng), cout, cin * kh * kw);
            let bias: Vec<f32> = (0..cout).map(|_| rng.random_range(-1.0..1.0)).collect();
            let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w: 1 };
            let x: Vec<f32> = (0..cin * h * wd).map(|_| rng.random_range(-2.0..2.0)).collect();
            let mut cols = vec![0.0; cin * kh * kw * oh * ow];
            window::im2col(&g, &x, &mut cols);
            let mut want = vec![0.0; cout * oh * ow];
            spmm::spmm_ref(&m, &bias, &cols, oh * ow, &mut want, 0..cout, false);
            for isa in variants() {
                for rows in [0..oh, 1..oh, 2..oh - 1] {
                    let mut got = want.clone();
                    let plane = oh * ow;
                    rows.clone().for_each(|oy| (0..cout).for_each(|c| got[c * plane + oy * ow..][..ow].fill(f32::NAN)));
                    direct::conv_direct(isa, &m, &bias, &g, &x, &mut got, 0..cout, rows.clone(), false, None);
                    assert_close(&got, &want, &format!("one-sample direct {} {window:?} {h}x{wd} rows {rows:?}", isa.name()));
                }
            }
        }
    }
}

#[test]
fn unfolding_the_quantized_image_equals_quantizing_im2col() {
    use engine::graph::Window;
    use engine::kernels::{q8, q8conv};
    let mut rng = StdRng::seed_from_u64(20);
    // (in channels, height, width, kernel, stride, pad, dilation): K = 25, 150, 27, 36, 2 rows,
    // and 147 for a ResNet stem at stride 2 (its last group of four one short).
    let shapes = [
        (1, 28, 28, 5, 1, 2, 1),
        (6, 14, 14, 5, 1, 0, 1),
        (3, 9, 7, 3, 2, 1, 1),
        (4, 8, 8, 3, 1, 2, 2),
        (2, 5, 5, 1, 1, 0, 1),
        (3, 12, 11, 7, 2, 3, 1),
    ];
    for &(cin, h, wd, k, stride, pad, dilation) in &shapes {
        let window = Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [dilation, dilation], ceil_mode: false };
        let (oh, ow) = window.output(h, wd, "t").unwrap();
        let rows_k = cin * k * k;
        for w in [1, 3, 16, 32] {
            let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w };
            let x: Vec<f32> = (0..cin * h * wd * w).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (scale, zero) = (rng.random_range(0.005..0.05f32), rng.random_range(0..=255u8));
            let mut xq = vec![0u8; q8::quantized_len(x.len(), 1)];
            q8::quantize_ref(&x, x.len(), 1, scale, zero, &mut xq);
            for rows in [0..oh, oh / 2..oh] {
                let band = rows.len() * ow * w;
                let mut cols = vec![0.0; rows_k * band];
                window::im2col_rows(&g, &x, rows.clone(), &mut cols);
                let mut want = vec![0u8; q8::quantized_len(rows_k, band)];
                q8::quantize_ref(&cols, rows_k, band, scale, zero, &mut want);
                let mut got = vec![7u8; want.len()];
                let groups = rows_k.div_ceil(4);
                q8conv::im2col_u8_ref(&g, &xq, rows.clone(), 0..groups, zero, &mut got);
                assert_eq!(got, want, "reference {cin}x{h}x{wd} k{k} s{stride} w={w} rows {rows:?}");
                for isa in variants() {
                    let mut got = vec![7u8; want.len()];
                    q8conv::im2col_u8(isa, &g, &xq, rows.clone(), 0..groups, zero, &mut got);
                    assert_eq!(got, want, "{} {cin}x{h}x{wd} k{k} s{stride} w={w} rows {rows:?}", isa.name());
                    // Groups from the second on, as another thread would unfold them.
                    let mut part = vec![7u8; (groups - 1) * band * 4];
                    q8conv::im2col_u8(isa, &g, &xq, rows.clone(), 1..groups, zero, &mut part);
                    assert_eq!(part[..], want[band * 4..], "{} groups 1.. {cin}x{h}x{wd} k{k} s{stride} w={w}", isa.name());
                }
            }
        }
    }
}

/// The padded image's unfolding (stride 1 along rows, any stride between rows, any padding and
/// dilation) gives what quantizing im2col's columns gives, on every instruction set, for any
/// output rows, groups and channel parts, at widths that leave vector tails (one sample's 5- to
/// 28-pixel rows, 3 samples) and whole vectors.
#[test]
fn unfolding_the_padded_quantized_image_equals_quantizing_im2col() {
    use engine::graph::Window;
    use engine::kernels::{q8, q8conv};
    let mut rng = StdRng::seed_from_u64(22);
    // (in channels, height, width, kernel, stride between rows, pads top/left/bottom/right,
    // dilation): ResNet's 3x3 and 1x1 layers, a 5x5 LeNet layer, uneven padding and strides.
    let shapes = [
        (3, 14, 14, [3, 3], 1, [1, 1, 1, 1], 1),
        (6, 28, 28, [5, 5], 1, [2, 2, 2, 2], 1),
        (5, 7, 7, [1, 1], 1, [0, 0, 0, 0], 1),
        (3, 9, 5, [3, 2], 2, [1, 0, 2, 1], 1),
        (4, 8, 8, [3, 3], 1, [2, 2, 2, 2], 2),
        (2, 6, 17, [2, 7], 3, [0, 3, 1, 3], 1),
    ];
    for &(cin, h, wd, kernel, stride, pads, dilation) in &shapes {
        let window = Window { kernel, stride: [stride, 1], pads, dilation: [dilation; 2], ceil_mode: false };
        let (oh, ow) = window.output(h, wd, "t").unwrap();
        let rows_k = cin * kernel[0] * kernel[1];
        let groups = rows_k.div_ceil(4);
        for w in [1, 3, 16] {
            let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w };
            let x: Vec<f32> = (0..cin * h * wd * w).map(|_| rng.random_range(-2.0..2.0)).collect();
            let (scale, zero) = (rng.random_range(0.005..0.05f32), rng.random_range(0..=255u8));
            for rows in [0..oh, oh / 2..oh, 0..1] {
                let band = rows.len() * ow * w;
                let mut cols = vec![0.0; rows_k * band];
                window::im2col_rows(&g, &x, rows.clone(), &mut cols);
                let mut want = vec![0u8; q8::quantized_len(rows_k, band)];
                q8::quantize_ref(&cols, rows_k, band, scale, zero, &mut want);
                for isa in variants() {
                    let what = format!("{} {cin}x{h}x{wd} k{kernel:?} s{stride} pads {pads:?} w={w} rows {rows:?}", isa.name());
                    // The channels quantized in two parts, as two threads would.
                    let mut xp = vec![7u8; q8conv::padded_len(&g)];
                    let plane = q8conv::padded_plane(&g);
                    let (first, second) = xp.split_at_mut(cin / 2 * plane);
                    q8conv::quantize_padded(isa, &g, &x, rows.clone(), 0..cin / 2, (scale, zero), first);
                    q8conv::quantize_padded(isa, &g, &x, rows.clone(), cin / 2..cin, (scale, zero), second);
                    let mut got = vec![7u8; want.len()];
                    q8conv::im2col_u8_padded(isa, &g, &xp, rows.clone(), 0..groups, zero, &mut got);
                    assert_eq!(got, want, "{what}");
                    let mut part = vec![7u8; (groups - 1) * band * 4];
                    q8conv::im2col_u8_padded(isa, &g, &xp, rows.clone(), 1..groups, zero, &mut part);
                    assert_eq!(part[..], want[band * 4..], "groups 1.. {what}");
                }
            }
        }
    }
}

#[test]
fn direct_int8_convolution_equals_im2col_and_the_grouped_kernel() {
    use engine::graph::Window;
    use engine::kernels::q8::{self, Dequant, Q8Matrix};
    use engine::kernels::{q8conv, q8direct};
    let mut rng = StdRng::seed_from_u64(21);
    // (in channels, height, width, kernel height, kernel width, pads top/left/bottom/right).
    let shapes = [
        (1, 28, 28, 5, 5, [2, 2, 2, 2]),
        (6, 14, 14, 5, 5, [0; 4]),
        (3, 9, 7, 3, 3, [1, 0, 2, 1]),
        (2, 6, 5, 1, 1, [0; 4]),
        (4, 5, 9, 2, 7, [1; 4]),
    ];
    for &(cin, h, wd, kh, kw, pads) in &shapes {
        let window = Window { kernel: [kh, kw], stride: [1, 1], pads, dilation: [1, 1], ceil_mode: false };
        let (oh, ow) = window.output(h, wd, "t").unwrap();
        let (rows, cols) = (rng.random_range(1..20), cin * kh * kw);
        for sparsity in [0.0, 0.5, 0.9, 1.0] {
            let values: Vec<i8> =
                (0..rows * cols).map(|_| if rng.random_bool(sparsity) { 0 } else { rng.random_range(-127..=127) }).collect();
            let matrix = Q8Matrix::from_int8(&values, rows, cols);
            let (scale, zero) = (rng.random_range(0.005..0.05f32), rng.random_range(0..=255u8));
            let d = Dequant {
                bias: (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect(),
                mult: (0..rows).map(|_| rng.random_range(1e-4..1e-3)).collect(),
                zero_corr: matrix.row_sums.iter().map(|&r| r * zero as i32).collect(),
                relu: sparsity > 0.4,
                fake_quant: (sparsity == 0.5).then_some((0.002, 9)),
            };
            for w in [1, 3, 16, 32, 48] {
                let g = Geometry { channels: cin, in_hw: [h, wd], out_hw: [oh, ow], window, w };
                let sc = q8direct::ShiftConv::new(&values, rows, &g).expect("stride 1");
                let x: Vec<f32> = (0..cin * h * wd * w).map(|_| rng.random_range(-2.0..2.0)).collect();
                let mut xq = vec![0u8; x.len()];
                q8::quantize_values(Isa::Scalar, &x, scale, zero, &mut xq);
                for out_rows in [0..oh, oh / 2..oh, 1.min(oh)..oh.min(2)] {
                    // The reference: unfold the quantized image, the grouped kernel's twin.
                    let band = out_rows.len() * ow * w;
                    let mut cols_q = vec![0u8; q8::quantized_len(cols, band)];
                    q8conv::im2col_u8_ref(&g, &xq, out_rows.clone(), 0..cols.div_ceil(4), zero, &mut cols_q);
                    let mut banded = vec![0.0; rows * band];
                    q8::spmm_q8_ref(&matrix, &cols_q, band, &mut banded, 0..rows, &d);
                    let mut want = vec![f32::NAN; rows * oh * ow * w];
                    for (o, part) in banded.chunks_exact(band.max(1)).enumerate() {
                        want[(o * oh + out_rows.start) * ow * w..][..band].copy_from_slice(part);
                    }
                    let what = format!("{cin}x{h}x{wd} k{kh}x{kw} pads {pads:?} s={sparsity} w={w} rows {out_rows:?}");
                    let mut xs_ref = vec![1u8; sc.image_len(&g, w)];
                    let source = q8direct::Source::F32 { x: &x, scale, zero };
                    q8direct::shift_image_ref(&g, &sc, source, out_rows.clone(), &mut xs_ref);
                    let mut got = vec![f32::NAN; want.len()];
                    q8direct::conv_q8_direct_ref(&sc, &d, &g, &xs_ref, q8direct::Out::F32(&mut got), 0..rows, out_rows.clone());
                    assert_eq!(got.map_nan(), want.map_nan(), "reference {what}");
                    // Codes out: the f32 output quantized for a next layer.
                    let (scale2, zero2) = (rng.random_range(0.01..0.1f32), rng.random_range(0..=255u8));
                    let want_codes: Vec<u8> =
                        want.iter().map(|&v| if v.is_nan() { 9 } else { q8::quantize_value(v, 1.0 / scale2, zero2) }).collect();
                    for isa in variants() {
                        for source in [source, q8direct::Source::Codes { x: &xq, zero }] {
                            let mut xs = vec![1u8; xs_ref.len()];
                            let mut row_buf = vec![0u8; (sc.wp + 3) * w];
                            q8direct::shift_image(isa, &g, &sc, source, out_rows.clone(), &mut row_buf, &mut xs);
                            assert!(xs == xs_ref, "shifted image {} {what}", isa.name());
                        }
                        let mut got = vec![f32::NAN; want.len()];
                        q8direct::conv_q8_direct(isa, &sc, &d, &g, &xs_ref, q8direct::Out::F32(&mut got), 0..rows, out_rows.clone());
                        assert_eq!(got.map_nan(), want.map_nan(), "{} {what}", isa.name());
                        let mut codes = vec![9u8; want.len()];
                        q8direct::conv_q8_direct(
                            isa,
                            &sc,
                            &d,
                            &g,
                            &xs_ref,
                            q8direct::Out::codes(&mut codes, scale2, zero2),
                            0..rows,
                            out_rows.clone(),
                        );
                        assert!(codes == want_codes, "codes {} {what}", isa.name());
                        // Channels 1.. write only their own rows, from the start of `y`.
                        if rows > 1 {
                            let plane = oh * ow * w;
                            let mut part = vec![f32::NAN; (rows - 1) * plane];
                            q8direct::conv_q8_direct(isa, &sc, &d, &g, &xs_ref, q8direct::Out::F32(&mut part), 1..rows, out_rows.clone());
                            assert_eq!(part.map_nan(), want[plane..].to_vec().map_nan(), "channels 1.. {} {what}", isa.name());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn codes_regroup_and_max_pool_as_their_f32_values_would() {
    use engine::graph::Window;
    use engine::kernels::q8;
    let mut rng = StdRng::seed_from_u64(22);
    for (k, ld) in [(1, 16), (3, 17), (4, 32), (25, 48), (400, 64), (7, 5)] {
        let x: Vec<u8> = (0..k * ld).map(|_| rng.random()).collect();
        let zero = rng.random();
        let mut got = vec![1u8; q8::quantized_len(k, ld)];
        q8::group_codes(&x, k, ld, zero, &mut got);
        for g in 0..k.div_ceil(4) {
            for s in 0..ld {
                for j in 0..4 {
                    let f = 4 * g + j;
                    let want = if f < k { x[f * ld + s] } else { zero };
                    assert_eq!(got[(g * ld + s) * 4 + j], want, "k={k} ld={ld} feature {f} sample {s}");
                }
            }
        }
    }
    // Max pooling of codes equals the codes of max pooling (with padding, strides, overlaps).
    for (c, h, wd, k, stride, pad, w) in
        [(6, 28, 28, 2, 2, 0, 32), (3, 7, 9, 3, 2, 1, 16), (2, 5, 5, 3, 1, 1, 3), (2, 6, 6, 2, 2, 0, 80), (1, 4, 4, 2, 1, 1, 64)]
            .into_iter()
            // One sample: rows of several vectors (and a partial one) at strides 1, 2 and 3.
            .chain([(2, 28, 28, 2, 2, 0, 1), (2, 5, 150, 3, 1, 1, 1), (2, 6, 149, 3, 2, 1, 1), (1, 7, 40, 3, 3, 1, 1)])
    {
        let window = Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [1, 1], ceil_mode: false };
        let (oh, ow) = window.output(h, wd, "t").unwrap();
        let g = Geometry { channels: c, in_hw: [h, wd], out_hw: [oh, ow], window, w };
        let x: Vec<f32> = (0..c * h * wd * w).map(|_| rng.random_range(-1.0..3.0)).collect();
        let (scale, zero) = (0.02, 60);
        let mut pooled = vec![0.0; c * oh * ow * w];
        window::pool(Isa::Scalar, &g, &x, &mut pooled, None);
        let want: Vec<u8> = pooled.iter().map(|&v| q8::quantize_value(v, 1.0 / scale, zero)).collect();
        let codes: Vec<u8> = x.iter().map(|&v| q8::quantize_value(v, 1.0 / scale, zero)).collect();
        for isa in variants() {
            let mut got = vec![0u8; want.len()];
            window::max_pool_codes(isa, &g, &codes, &mut got, 0..oh);
            assert!(got == want, "{} {c}x{h}x{wd} k{k} s{stride} p{pad} w={w}", isa.name());
        }
    }
}

/// Bit patterns, so that NaN (rows not written) compares equal to NaN.
trait MapNan {
    fn map_nan(&self) -> Vec<u32>;
}

impl MapNan for [f32] {
    fn map_nan(&self) -> Vec<u32> {
        self.iter().map(|v| v.to_bits()).collect()
    }
}

#[test]
fn amx_tiles_match_the_scalar_twin_exactly() {
    use engine::kernels::q8::{self, Dequant, Output, Q8Matrix};
    use engine::kernels::q8amx::{self, TileMatrix};
    if !q8amx::available(Isa::detect()) {
        engine::testing::record_skip("the AMX tile kernel (no AMX on this CPU)");
        return;
    }
    let mut rng = StdRng::seed_from_u64(28);
    let tile_cases = [(16, 64, 32, 0.5), (33, 130, 40, 0.9), (300, 784, 64, 0.9), (100, 300, 17, 0.9), (5, 1000, 3, 0.0)];
    for (i, (rows, cols, w, s)) in cases().into_iter().chain(wide_int8_cases()).chain(tile_cases).enumerate() {
        let values = int8_matrix(rows, cols, s, i % 2 == 0, &mut rng);
        let (m, tiles) = (Q8Matrix::from_int8(&values, rows, cols), TileMatrix::from_int8(&values, rows, cols));
        let zero = rng.random_range(0..=255u8);
        let x: Vec<f32> = (0..cols * w).map(|_| rng.random_range(-3.0..3.0)).collect();
        let mut qx = vec![0u8; q8::quantized_len(cols, w)];
        q8::quantize_ref(&x, cols, w, 0.02, zero, &mut qx);
        let d = Dequant {
            bias: (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect(),
            mult: (0..rows).map(|_| rng.random_range(1e-4..1e-2)).collect(),
            zero_corr: m.row_sums.iter().map(|&r| r * zero as i32).collect(),
            relu: i % 3 != 0,
            fake_quant: (i % 4 == 1).then_some((0.005, 20)),
        };
        let what = format!("amx {rows}x{cols} w={w} s={s}");
        let mut want = vec![0.0; rows * w];
        q8::spmm_q8_ref(&m, &qx, w, &mut want, 0..rows, &d);
        let mut got = vec![f32::NAN; rows * w];
        q8amx::matmul_into(&tiles, &qx, w, Output::F32(&mut got), 0..rows, &d);
        assert_eq!(got, want, "{what}");
        // Row ranges that start and end inside a tile of 16 rows write only their rows.
        if rows > 2 {
            let mut part = vec![f32::NAN; (rows - 2) * w];
            q8amx::matmul_into(&tiles, &qx, w, Output::F32(&mut part), 1..rows - 1, &d);
            assert_eq!(part[..], want[w..(rows - 1) * w], "{what} rows 1..{}", rows - 1);
        }
        let stride = w + 3;
        let mut strided = vec![f32::NAN; (rows - 1) * stride + w];
        q8amx::matmul_into(&tiles, &qx, w, Output::F32Rows { y: &mut strided, stride }, 0..rows, &d);
        for o in 0..rows {
            assert_eq!(strided[o * stride..o * stride + w], want[o * w..(o + 1) * w], "{what} strided");
        }
        let (next_scale, next_zero) = (rng.random_range(0.002..0.02f32), rng.random_range(0..=255u8));
        let mut want_q = vec![0u8; q8::quantized_len(rows, w)];
        q8::spmm_q8_ref_into(&m, &qx, w, Output::quantized(&mut want_q, next_scale, next_zero), 0..rows, &d);
        let mut got_q = vec![7u8; want_q.len()];
        q8amx::matmul_into(&tiles, &qx, w, Output::quantized(&mut got_q, next_scale, next_zero), 0..rows, &d);
        assert_eq!(got_q, want_q, "{what} requantized");
        if rows > 4 {
            let mut part = vec![7u8; q8::quantized_len(rows - 4, w)];
            q8amx::matmul_into(&tiles, &qx, w, Output::quantized(&mut part, next_scale, next_zero), 4..rows, &d);
            assert_eq!(part[..], want_q[w * 4..], "{what} requantized rows 4..");
        }
    }
}

/// The depth-wise kernel equals its scalar twin, the grouped kernel: strides 1 and 2 (and 3 down
/// the columns), padding on some sides only, dilation down the columns, 3x3 and 5x5 and 1x7
/// kernels, rows shorter and longer than a vector, a 1-pixel image, pruned weights, channel ranges.
#[test]
fn depthwise_convolution_matches_the_grouped_kernel() {
    use engine::graph::Window;
    use engine::kernels::{depthwise, grouped};
    let mut rng = StdRng::seed_from_u64(23);
    // (channels, height, width, [kh, kw], [stride h, stride w], pads [top, left, bottom, right], dilation h)
    let cases = [
        (4, 7, 7, [3, 3], [1, 1], [1; 4], 1),
        (3, 1, 1, [3, 3], [1, 1], [1; 4], 1),
        (5, 17, 17, [3, 3], [1, 1], [1; 4], 1),
        (2, 9, 112, [3, 3], [1, 1], [1; 4], 1),
        (3, 6, 5, [5, 5], [1, 1], [2; 4], 1),
        (2, 4, 4, [3, 3], [1, 1], [0; 4], 1),
        (4, 9, 40, [3, 3], [2, 2], [1; 4], 1),
        (3, 14, 14, [3, 3], [2, 2], [0, 0, 1, 1], 1),
        (2, 13, 33, [5, 5], [2, 2], [2; 4], 1),
        (2, 11, 37, [3, 3], [2, 2], [1, 2, 0, 1], 1),
        (3, 10, 50, [1, 7], [3, 1], [0, 3, 0, 3], 1),
        (2, 12, 19, [3, 3], [1, 2], [2, 1, 2, 1], 2),
        (1, 1, 1, [3, 3], [2, 2], [1; 4], 1),
        (2, 8, 8, [4, 4], [2, 2], [1, 1, 2, 2], 1),
    ];
    for (c, h, wd, kernel, stride, pads, dil) in cases {
        let window = Window { kernel, stride, pads, dilation: [dil, 1], ceil_mode: false };
        let (oh, ow) = window.output(h, wd, "").unwrap();
        let g = Geometry { channels: c, in_hw: [h, wd], out_hw: [oh, ow], window, w: 1 };
        let what = format!("{c}ch {h}x{wd} k{kernel:?} stride {stride:?} pads {pads:?} dilation {dil}");
        for s in [0.0, 0.5] {
            let weight = matrix(c, kernel[0] * kernel[1], s, &mut rng);
            let bias: Vec<f32> = (0..c).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..c * h * wd).map(|_| rng.random_range(-2.0..2.0)).collect();
            for relu in [false, true] {
                let mut want = vec![0.0; c * oh * ow];
                grouped::group_conv(&g, c, &weight, &bias, &x, &mut want, 0..c, relu);
                for isa in variants().into_iter().filter(|&isa| depthwise::takes(isa, &g)) {
                    let mut got = vec![f32::NAN; want.len()];
                    depthwise::depthwise(isa, &g, &weight, &bias, &x, &mut got, 0..c, relu, None);
                    assert_close(&got, &want, &what);
                    // The last channels only.
                    let mut part = vec![f32::NAN; (c - 1) * oh * ow];
                    depthwise::depthwise(isa, &g, &weight, &bias, &x, &mut part, 1..c, relu, None);
                    assert_close(&part, &want[oh * ow..], &format!("{what}, channels 1.."));
                    // A fused Clip after the ReLU, as the separate pass computes it.
                    let mut clipped = vec![f32::NAN; want.len()];
                    depthwise::depthwise(isa, &g, &weight, &bias, &x, &mut clipped, 0..c, relu, Some([-0.5, 1.0]));
                    let clamped: Vec<f32> = want.iter().map(|&v| engine::kernels::elementwise::clamp(v, -0.5, 1.0)).collect();
                    assert_close(&clipped, &clamped, &format!("{what}, clipped"));
                }
            }
        }
    }
}

/// Strided grouped and depth-wise convolutions of one sample (read through each input row's
/// phases) equal, bit for bit, sample 0 of the same convolution on a tile of two samples (read
/// pixel by pixel): strides 2 and 3, dilation, odd sizes, groups of one and of several channels,
/// channel ranges.
#[test]
fn strided_grouped_convolutions_of_one_sample_match_wider_tiles() {
    use engine::graph::Window;
    use engine::kernels::grouped;
    let mut rng = StdRng::seed_from_u64(24);
    // (channels, groups, out, height, width, kernel, stride, pad, dilation)
    let cases = [
        // Output rows of 16 or more read the phases; shorter ones gather (both checked).
        (4, 4, 4, 9, 40, 3, 2, 1, 1),
        (6, 3, 6, 11, 37, 3, 2, 1, 1),
        (3, 3, 6, 10, 50, 5, 3, 2, 1),
        (2, 2, 2, 8, 36, 3, 2, 2, 2),
        (4, 4, 4, 9, 9, 3, 2, 1, 1),
        (1, 1, 1, 1, 1, 3, 2, 1, 1),
    ];
    for (c, groups, out, h, wd, k, stride, pad, dil) in cases {
        let window = Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [dil, dil], ceil_mode: false };
        let [oh, ow] = [h, wd].map(|n| (n + 2 * pad - dil * (k - 1) - 1) / stride + 1);
        let one = Geometry { channels: c, in_hw: [h, wd], out_hw: [oh, ow], window, w: 1 };
        let two = Geometry { w: 2, ..one };
        let weight = matrix(out, c / groups * k * k, 0.3, &mut rng);
        let bias: Vec<f32> = (0..out).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..c * h * wd).map(|_| rng.random_range(-2.0..2.0)).collect();
        // The same sample twice, interleaved as a two-sample tile.
        let x2: Vec<f32> = x.iter().flat_map(|&v| [v, v]).collect();
        for relu in [false, true] {
            let mut wide = vec![0.0; out * oh * ow * 2];
            grouped::group_conv(&two, groups, &weight, &bias, &x2, &mut wide, 0..out, relu);
            let want: Vec<f32> = wide.iter().step_by(2).copied().collect();
            let mut got = vec![f32::NAN; out * oh * ow];
            grouped::group_conv(&one, groups, &weight, &bias, &x, &mut got, 0..out, relu);
            assert!(got == want, "{c}ch {groups} groups {h}x{wd} k{k} stride {stride} pad {pad} dilation {dil}");
            let mut part = vec![f32::NAN; (out - 1) * oh * ow];
            grouped::group_conv(&one, groups, &weight, &bias, &x, &mut part, 1..out, relu);
            assert!(part[..] == want[oh * ow..], "channel range");
        }
    }
}

/// The residual addition with its ReLU and fake quantization, out of place and in place, equals
/// adding, then the ReLU, then quantizing and dequantizing, bit for bit.
#[test]
fn fused_additions_equal_adding_then_fake_quantizing() {
    use engine::kernels::{elementwise, q8};
    let mut rng = StdRng::seed_from_u64(31);
    for n in [0, 1, 15, 16, 17, 33, 1000, 2500] {
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        for relu in [false, true] {
            for fake_quant in [None, Some((0.01f32, 0u8)), Some((0.02, 131))] {
                let want: Vec<f32> = a
                    .iter()
                    .zip(&b)
                    .map(|(p, q)| {
                        let v = if relu { elementwise::relu(p + q) } else { p + q };
                        fake_quant.map_or(v, |(scale, zero)| q8::quantize_dequantize(v, scale, zero))
                    })
                    .collect();
                for isa in variants() {
                    let mut got = vec![f32::NAN; n];
                    elementwise::add_fake_quantized(isa, &a, &b, &mut got, relu, fake_quant);
                    let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{} n={n} relu={relu} {fake_quant:?}", isa.name());
                    // In place, as an int8 layer adds its fused residual (`MatMul::residual`).
                    let mut in_place = a.clone();
                    elementwise::add_in_place(isa, &mut in_place, &b, relu, fake_quant);
                    let same = in_place.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                    assert!(same, "{} in place n={n} relu={relu} {fake_quant:?}", isa.name());
                }
            }
        }
    }
}
