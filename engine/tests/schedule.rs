//! Depth-wise execution computes what layer-wise execution computes: MLPs and CNNs (fp32 and
//! int8), batch sizes that do and do not divide into tiles, one and two threads, and cache
//! budgets small enough to split the network into several columns.

mod common;

use common::*;
use engine::compile::{self, KernelPolicy, Options};
use engine::exec::Session;
use engine::schedule::Schedule;

#[test]
fn depthwise_matches_layerwise() {
    let graphs = [
        ("mlp", mlp(21, 0.9)),
        ("cnn", cnn(22, 0.8)),
        ("lenet5", lenet(23, 0.9)),
        ("lenet5-int8", quantized(lenet(24, 0.9))),
        ("mobile", mobile(25, 0.8)),
        ("bottleneck", bottleneck(26, 0.9)),
    ];
    for (name, graph) in graphs {
        let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
        for batch in [1, 3, 17, 64, 100, 130] {
            let input = random_input(batch as u64, batch, &graph.input_shape);
            let reference = Session::with_schedule(&model, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
            for threads in [1, 2] {
                for (schedule, budget) in [
                    (Schedule::Depthwise, None),
                    (Schedule::Depthwise, Some(48 << 10)),
                    (Schedule::Auto, None),
                    (Schedule::Layerwise, None),
                ] {
                    let mut session = Session::with_schedule(&model, threads, schedule, budget).unwrap();
                    let got = session.run(&input.data, batch).unwrap();
                    let err = rel_err(&got, &reference);
                    assert!(err < 1e-5, "{name} batch {batch} {threads} threads {schedule:?} budget {budget:?}: relative error {err}");
                }
            }
        }
    }
}

#[test]
fn planner_groups_layers_that_fit_and_splits_those_that_do_not() {
    let model = compile::compile(mlp(25, 0.9), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
    let session = Session::with_schedule(&model, 2, Schedule::Depthwise, Some(2 << 20)).unwrap();
    let plan = session.plan(256);
    assert_eq!(plan.columns.len(), 1, "a small MLP fits one column: {plan:?}");
    assert!(plan.columns[0].fits && plan.columns[0].layers == (0..model.layers.len()));
    assert!(plan.tile <= 64 && plan.tile >= 8);
    // Every layer present exactly once, in order, whatever the budget.
    for budget in [1 << 10, 16 << 10, 64 << 10, 1 << 20] {
        let plan = Session::with_schedule(&model, 2, Schedule::Depthwise, Some(budget)).unwrap().plan(256);
        let layers: Vec<usize> = plan.columns.iter().flat_map(|c| c.layers.clone()).collect();
        assert_eq!(layers, (0..model.layers.len()).collect::<Vec<_>>(), "budget {budget}");
        assert!(plan.columns.iter().all(|c| c.fits || c.layers.len() == 1), "a column that does not fit holds one layer");
    }
    let tiny = Session::with_schedule(&model, 2, Schedule::Depthwise, Some(1 << 10)).unwrap().plan(256);
    assert!(tiny.columns.len() > 1, "a 1 KiB budget cannot hold the first layer's weights");
    // With two threads and a batch of 64, depth-wise tiles give each thread its own samples.
    assert_eq!(Session::with_schedule(&model, 2, Schedule::Auto, None).unwrap().plan(64).tile, 32);
    assert_eq!(Session::with_schedule(&model, 2, Schedule::Layerwise, None).unwrap().plan(64).columns.len(), model.layers.len());
}

/// At batch 1 a column is cut into row bands only where one of its convolutions, planned alone
/// with its whole images, overflows the budget (bands re-read weights once per band and gain
/// nothing where every image fits): checked over budgets from 4 KiB to 2 MiB on the reduced
/// ResNet, some of which do band.
#[test]
fn one_sample_columns_are_banded_only_where_a_convolution_overflows_alone() {
    // Strided convolutions as written (on phase images where timed faster, they would make the
    // layers, and so the columns, vary between runs).
    let options = Options { phases: Some(false), ..Options::new(KernelPolicy::Auto).unwrap() };
    let model = compile::compile(bottleneck(52, 0.0), options).unwrap();
    let mut banded = 0;
    let mut budget = 4 << 10;
    while budget <= 2 << 20 {
        let plan = Session::with_schedule(&model, 2, Schedule::Auto, Some(budget)).unwrap().plan(1);
        let alone = Session::with_schedule(&model, 2, Schedule::Layerwise, Some(budget)).unwrap().plan(1);
        for c in plan.columns.iter().filter(|c| c.bands > 1) {
            banded += 1;
            let overflows = c.layers.clone().any(|l| matches!(model.layers[l].exec, compile::Exec::MatMul(_)) && !alone.columns[l].fits);
            assert!(overflows, "budget {budget}: column {:?} is banded though each of its convolutions fits alone", c.layers);
        }
        budget = budget * 3 / 2;
    }
    assert!(banded > 0, "no budget made a banded column: the check checked nothing");
}

#[test]
fn wide_tiles_after_narrow_ones_match_layerwise() {
    // The bottleneck network's stem writes 12x12 planes (whole vectors per sample), every later
    // convolution 6x6 or 3x3: budgets that keep the stem's tiles narrow widen the tiles after it,
    // the values crossing (the pool's output, read by both branches of the first block, or a
    // block's middle) copied into the wide layout.
    let graph = bottleneck(41, 0.8);
    let options = Options { phases: Some(false), ..Options::new(KernelPolicy::Auto).unwrap() };
    let model = compile::compile(graph.clone(), options).unwrap();
    let mut mixed = std::collections::BTreeSet::new();
    for batch in [5, 16, 33] {
        let input = random_input(batch as u64, batch, &graph.input_shape);
        let reference = Session::with_schedule(&model, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
        for threads in [1, 2] {
            for budget in [4 << 10, 8 << 10, 16 << 10, 32 << 10, 64 << 10] {
                let mut session = Session::with_schedule(&model, threads, Schedule::Depthwise, Some(budget)).unwrap();
                let plan = session.plan(batch);
                let tiles: Vec<usize> = plan.columns.iter().map(|c| c.tile).collect();
                assert_eq!(tiles[0], plan.tile);
                assert!(tiles.windows(2).all(|w| w[0] <= w[1]), "tiles only widen: {tiles:?}");
                if tiles[tiles.len() - 1] > tiles[0] {
                    mixed.insert((tiles[0], tiles[tiles.len() - 1]));
                }
                let got = session.run(&input.data, batch).unwrap();
                let err = rel_err(&got, &reference);
                assert!(err < 1e-5, "batch {batch}, {threads} threads, budget {budget}: relative error {err}, tiles {tiles:?}");
            }
        }
    }
    assert!(!mixed.is_empty(), "no plan widened its tiles: the check checked nothing");
    eprintln!("narrow -> wide tiles exercised: {mixed:?}");
}

#[test]
fn row_bands_match_layerwise() {
    // Budgets too small for whole images make the planner cut columns of convolutions, pools,
    // batch norms, ReLUs, element-wise functions and the residual add into row bands (at batch 1 on 2 threads, each
    // thread runs a part of the bands on a chunk of its own).
    let graphs = [("cnn", cnn(31, 0.8)), ("cnn-int8", quantized(cnn(32, 0.8))), ("lenet5", lenet(33, 0.9)), ("mobile", mobile(38, 0.8))];
    // ResNet-50's bottleneck blocks, their pointwise convolutions on dense and on sparse kernels.
    let bottlenecks =
        [("bottleneck-dense", bottleneck(39, 0.9), KernelPolicy::Dense), ("bottleneck-sparse", bottleneck(40, 0.9), KernelPolicy::Sparse)];
    let graphs = graphs.into_iter().map(|(name, graph)| (name, graph, KernelPolicy::Auto)).chain(bottlenecks);
    for (name, graph, policy) in graphs {
        let model = compile::compile(graph.clone(), Options::new(policy).unwrap()).unwrap();
        let mut banded = 0;
        for batch in [1, 3, 17, 64] {
            let input = random_input(batch as u64, batch, &graph.input_shape);
            let reference = Session::with_schedule(&model, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
            for threads in [1, 2] {
                for budget in [16 << 10, 32 << 10, 64 << 10, 128 << 10] {
                    let mut session = Session::with_schedule(&model, threads, Schedule::Depthwise, Some(budget)).unwrap();
                    let plan = session.plan(batch);
                    banded += plan.columns.iter().filter(|c| c.bands > 1 && c.layers.len() > 1).count();
                    for c in &plan.columns {
                        assert!(c.bands == 1 || engine::schedule::bandable(&model, c.layers.clone()), "{name}: {c:?} cannot be banded");
                    }
                    let got = session.run(&input.data, batch).unwrap();
                    let err = rel_err(&got, &reference);
                    assert!(err < 1e-5, "{name} batch {batch} {threads} threads budget {budget}: relative error {err}, plan {plan:?}");
                }
            }
        }
        assert!(banded > 0, "{name}: no budget led to a banded column of several layers");
    }
}

#[test]
fn columns_take_in_the_next_residual_block_where_its_input_is_read_again_inside() {
    // A column ending after the first block's addition would leave its output to the second
    // block's addition, outside the column: the planner looks a few layers ahead and takes the
    // second block in too (in row bands), so that value is read in cache both times.
    let graph = identity_bottlenecks(41, 0.8);
    let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
    let index = |name: &str| model.layers.iter().position(|l| l.name == name).unwrap_or_else(|| panic!("no layer {name}"));
    let (first_add, second_add) = (index("a_expand"), index("b_expand"));
    let mut spanning = 0;
    for batch in [1, 3] {
        let input = random_input(batch as u64, batch, &graph.input_shape);
        let reference = Session::with_schedule(&model, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
        for threads in [1, 2] {
            for budget in [12 << 10, 16 << 10, 24 << 10, 32 << 10, 48 << 10, 64 << 10] {
                let mut session = Session::with_schedule(&model, threads, Schedule::Depthwise, Some(budget)).unwrap();
                let plan = session.plan(batch);
                spanning += plan.columns.iter().filter(|c| c.layers.contains(&first_add) && c.layers.contains(&second_add)).count();
                let got = session.run(&input.data, batch).unwrap();
                let err = rel_err(&got, &reference);
                assert!(err < 1e-5, "batch {batch} {threads} threads budget {budget}: relative error {err}, plan {plan:?}");
            }
        }
    }
    assert!(spanning > 0, "no budget gave a column through both blocks");
}

#[test]
fn bands_cover_every_row_each_layer_needs() {
    let model = compile::compile(cnn(34, 0.8), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    // The longest bandable run from the first layer.
    let end = (1..=model.layers.len()).rev().find(|&e| engine::schedule::bandable(&model, 0..e)).unwrap();
    assert!(end >= 4, "the CNN's first layers are bandable");
    for bands in [1, 2, 3, 5, 7] {
        let mut covered = vec![vec![false; 64]; end];
        let mut starts = vec![0; end];
        for band in 0..bands {
            let need = engine::schedule::band_rows(&model, 0..end, bands, band);
            for (l, rows) in need.iter().enumerate() {
                rows.clone().for_each(|r| covered[l][r] = true);
                if !rows.is_empty() {
                    assert!(rows.start >= starts[l], "bands move down the image");
                    starts[l] = rows.start;
                }
            }
        }
        let last = &covered[end - 1][..model.layers[end - 1].out_shape[1]];
        assert!(last.iter().all(|&c| c), "{bands} bands cover the last layer's rows");
    }
}

#[test]
fn direct_convolutions_match_im2col_in_whole_models() {
    use engine::catalogue::{DirectWeights, F32Kernel, Kernels};
    use engine::compile::{Exec, Kernel};
    use std::sync::Arc;
    // Dense LeNet-5: its convolutions run blocks of 4 output channels together (6 channels: one
    // block and two alone; 16: four blocks), split over threads in whole blocks.
    for (name, graph) in [("cnn", cnn(35, 0.8)), ("lenet5", lenet(36, 0.9)), ("dense lenet5", lenet(37, 0.0))] {
        let im2col = compile::compile(graph.clone(), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
        // The direct kernel on wider tiles only, on one sample only (the compiler times the two
        // apart), and on both.
        for (one, wide) in [(Kernel::Sparse, Kernel::Direct), (Kernel::Direct, Kernel::Sparse), (Kernel::Direct, Kernel::Direct)] {
            let mut direct = im2col.clone();
            for layer in &mut direct.layers {
                if let Exec::MatMul(m) = &mut layer.exec
                    && let (Some(g), Some(csr)) = (m.conv, m.kernels.f32(true).and_then(F32Kernel::csr))
                {
                    let (sparse, direct) = (F32Kernel::Sparse(Arc::new(csr.clone())), DirectWeights::kernel(Arc::new(csr.clone()), &g));
                    let pick = |k: Kernel| if k == Kernel::Direct { direct.clone() } else { sparse.clone() };
                    m.kernels = Kernels::F32 { one_sample: pick(one), batched: pick(wide) };
                }
            }
            for batch in [1, 3, 17, 64, 100] {
                let input = random_input(batch as u64, batch, &graph.input_shape);
                let want = Session::with_schedule(&im2col, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
                for threads in [1, 2] {
                    for (schedule, budget) in
                        [(Schedule::Layerwise, None), (Schedule::Depthwise, None), (Schedule::Depthwise, Some(32 << 10))]
                    {
                        let got = Session::with_schedule(&direct, threads, schedule, budget).unwrap().run(&input.data, batch).unwrap();
                        let err = rel_err(&got, &want);
                        assert!(
                            err < 1e-5,
                            "{name} {one:?}/{wide:?} batch {batch} {threads} threads {schedule:?} {budget:?}: relative error {err}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn column_blocked_layers_match_plain_csr_in_whole_models() {
    use engine::catalogue::{F32Kernel, Kernels};
    use engine::compile::Exec;
    use engine::kernels::kblocked::{DEFAULT_KC, KBlocked};
    use std::sync::Arc;
    // Every weighted layer on the column-blocked kernel at both batch sizes (bottleneck blocks
    // with 1x1 and 3x3 convolutions read in place and through im2col, in row bands and whole, and
    // the MLP's linear layers), against the plain CSR kernel; widths 1 to 100 columns. Then the
    // convolutions with a window on the unfolding kernel (whole images and row bands, residuals
    // added as it stores), the others as before.
    let models = [("bottleneck", bottleneck(61, 0.8)), ("cnn", cnn(62, 0.7)), ("mlp", mlp(63, 0.9))];
    for ((name, graph), unfold) in models.into_iter().flat_map(|m| [(m.clone(), false), (m, true)]) {
        let plain = compile::compile(graph.clone(), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
        let mut blocked = plain.clone();
        let mut changed = 0;
        for layer in &mut blocked.layers {
            if let Exec::MatMul(m) = &mut layer.exec
                && let Some(csr) = m.kernels.f32(true).and_then(F32Kernel::csr)
            {
                // Narrow blocks, so that the small layers here span several.
                let weights = Arc::new(KBlocked::from_csr(csr, DEFAULT_KC.min(m.cols.div_ceil(3).max(1))));
                let blocked = match m.conv {
                    Some(g) if unfold && !g.window.is_pointwise() => F32Kernel::Unfolding(weights),
                    _ if unfold => continue,
                    _ => F32Kernel::ColumnBlocked(weights),
                };
                m.kernels = Kernels::F32 { one_sample: blocked.clone(), batched: blocked };
                changed += 1;
            }
        }
        if unfold && name == "mlp" {
            continue;
        }
        assert!(changed > 0, "{name}: no layer to block (unfolding: {unfold})");
        assert_outputs_within_rounding(&format!("{name} unfolding {unfold}"), &plain, &blocked, &graph.input_shape);
    }
}

#[test]
fn blocked_4x1_layers_match_plain_csr_in_whole_models() {
    use engine::catalogue::{F32Kernel, Kernels};
    use engine::compile::{Exec, MatMul};
    use engine::kernels::bcsr::Bcsr;
    use std::sync::Arc;
    // Every weighted layer on blocks of 4 rows at both widths, against the plain CSR kernel:
    // bottleneck blocks (1x1 layers read and written in place in row bands, residuals added as
    // it stores, 3x3 layers through im2col), the MLP's linear layers on one column, and the
    // inverted residual blocks' expansions fused into their depth-wise convolutions, run chunk
    // by chunk of channels (a fused ReLU6 clamped as it stores). Channel counts not multiples of
    // 4 leave blocks with rows of other chunks; widths 1 to 100 columns.
    let to_blocks = |m: &mut MatMul| {
        let csr = m.kernels.f32(true).and_then(F32Kernel::csr).expect("the sparse policy's CSR weights");
        let mut dense = vec![0.0; csr.rows * csr.cols];
        for r in 0..csr.rows {
            for j in csr.row_ptr[r] as usize..csr.row_ptr[r + 1] as usize {
                dense[r * csr.cols + csr.col[j] as usize] = csr.val[j];
            }
        }
        let blocked = F32Kernel::Blocked(Arc::new(Bcsr::from_dense(&dense, csr.rows, csr.cols)));
        m.kernels = Kernels::F32 { one_sample: blocked.clone(), batched: blocked };
    };
    let models = [
        ("bottleneck", bottleneck(71, 0.8)),
        ("cnn", cnn(72, 0.7)),
        ("mlp", mlp(73, 0.9)),
        ("inverted residual", inverted_residual(74, 0.8)),
    ];
    for (name, graph) in models {
        let plain = compile::compile(graph.clone(), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
        let mut blocked = plain.clone();
        let (mut changed, mut expansions) = (0, 0);
        for layer in &mut blocked.layers {
            match &mut layer.exec {
                Exec::MatMul(m) if m.int8().is_none() => to_blocks(m),
                Exec::GroupConv { expand: Some(m), .. } => {
                    to_blocks(m);
                    expansions += 1;
                }
                _ => continue,
            }
            changed += 1;
        }
        assert!(changed > 0, "{name}: no layer to block");
        assert!(name != "inverted residual" || expansions > 0, "no fused expansion");
        assert_outputs_within_rounding(name, &plain, &blocked, &graph.input_shape);
    }
}

/// `model` (the same layers as `reference` on other kernels) within rounding of `reference`
/// layer-wise on one thread: widths 1 to 100 columns, 1 and 2 threads, layer-wise, depth-wise, and
/// depth-wise in row bands (a 32 KiB budget).
fn assert_outputs_within_rounding(name: &str, reference: &compile::Model, model: &compile::Model, input_shape: &[usize]) {
    for batch in [1, 3, 17, 64, 100] {
        let input = random_input(batch as u64, batch, input_shape);
        let want = Session::with_schedule(reference, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
        for threads in [1, 2] {
            for (schedule, budget) in [(Schedule::Layerwise, None), (Schedule::Depthwise, None), (Schedule::Depthwise, Some(32 << 10))] {
                let got = Session::with_schedule(model, threads, schedule, budget).unwrap().run(&input.data, batch).unwrap();
                let err = rel_err(&got, &want);
                assert!(err < 1e-5, "{name} batch {batch} {threads} threads {schedule:?} {budget:?}: relative error {err}");
            }
        }
    }
}

#[test]
fn winograd_convolutions_match_dense_gemm_in_whole_models() {
    use engine::catalogue::{F32Kernel, Kernels};
    use engine::compile::Exec;
    use engine::kernels::winograd::{self, Winograd};
    use std::sync::Arc;
    // Every dense 3x3 convolution at stride 1 on Winograd's products for one sample (residuals
    // added as it stores in the bottleneck blocks), against dense GEMM everywhere: whole images,
    // row bands (which run GEMM on its dense weights), batches that leave a one-sample tile.
    for (name, graph) in [("bottleneck", bottleneck(64, 0.0)), ("cnn", cnn(65, 0.0))] {
        let dense = compile::compile(graph.clone(), Options::new(KernelPolicy::Dense).unwrap()).unwrap();
        let mut transformed = dense.clone();
        let mut changed = 0;
        for layer in &mut transformed.layers {
            if let Exec::MatMul(m) = &mut layer.exec
                && let Some(g) = m.conv.filter(winograd::applies)
                && let Kernels::F32 { one_sample: F32Kernel::Dense(weights), batched } = &m.kernels
            {
                let wg = Arc::new(Winograd::new(weights, m.rows, g.channels));
                m.kernels = Kernels::F32 { one_sample: F32Kernel::Winograd(wg, weights.clone()), batched: batched.clone() };
                changed += 1;
            }
        }
        assert!(changed > 0, "{name}: no layer for Winograd");
        for batch in [1, 3, 17] {
            let input = random_input(batch as u64, batch, &graph.input_shape);
            let want = Session::with_schedule(&dense, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
            for threads in [1, 2, 3] {
                for (schedule, budget) in [(Schedule::Layerwise, None), (Schedule::Depthwise, None), (Schedule::Depthwise, Some(32 << 10))]
                {
                    let got = Session::with_schedule(&transformed, threads, schedule, budget).unwrap().run(&input.data, batch).unwrap();
                    let err = rel_err(&got, &want);
                    assert!(err < 1e-5, "{name} batch {batch} {threads} threads {schedule:?} {budget:?}: relative error {err}");
                }
            }
        }
    }
}

#[test]
fn auto_times_depthwise_against_layerwise_and_keeps_one_per_batch_size() {
    // LeNet-300-100 at batch 64 on 2 threads: the planner's rule picks depth-wise columns.
    let graph = mlp_with(71, 0.9, [784, 300, 100, 10]);
    let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    let mut session = Session::new(&model, 2).unwrap();
    assert_eq!(session.plan(64).schedule, Schedule::Depthwise, "the rule's own choice, before any run");
    let input = random_input(71, 64, &graph.input_shape);
    let want = Session::with_schedule(&model, 1, Schedule::Layerwise, None).unwrap().run(&input.data, 64).unwrap();
    let got = session.run(&input.data, 64).unwrap();
    assert!(rel_err(&got, &want) < 1e-5);
    let kept = session.plan(64).schedule;
    assert!(matches!(kept, Schedule::Depthwise | Schedule::Layerwise), "{kept:?}");
    for _ in 0..3 {
        assert_eq!(session.run(&input.data, 64).unwrap(), got, "the kept schedule answers the same");
        assert_eq!(session.plan(64).schedule, kept, "measured once per batch size");
    }
    // Another batch size is measured on its own; explicit schedules are never replaced.
    assert!(rel_err(&session.run(&input.data[..784 * 3], 3).unwrap(), &want[..30]) < 1e-5);
    let mut explicit = Session::with_schedule(&model, 2, Schedule::Depthwise, None).unwrap();
    explicit.run(&input.data, 64).unwrap();
    assert_eq!(explicit.plan(64).schedule, Schedule::Depthwise);
}

#[test]
fn int8_layers_on_amx_tiles_compute_what_the_sparse_int8_kernels_do() {
    if !engine::kernels::q8amx::available(engine::kernels::Isa::detect()) {
        engine::testing::record_skip("int8 layers on AMX tiles (no AMX on this CPU)");
        return;
    }
    let graph = quantized(mlp_with(41, 0.9, [784, 300, 100, 10]));
    let sparse = compile::compile(graph.clone(), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
    let tiles =
        compile::compile(graph.clone(), Options { amx: compile::Amx::Always, ..Options::new(KernelPolicy::Auto).unwrap() }).unwrap();
    let kernels: Vec<_> = tiles
        .layers
        .iter()
        .filter_map(|l| match &l.exec {
            compile::Exec::MatMul(m) => Some(m.kernel(false)),
            _ => None,
        })
        .collect();
    assert!(kernels.iter().all(|&k| k == compile::Kernel::Int8Tiles), "{kernels:?}");
    assert_same_outputs(&sparse, &tiles, &graph.input_shape, &[1, 3, 17, 64, 100]);
}

/// `model` on 1 and 2 threads, in either schedule, gives the same bytes as `reference` layer-wise
/// on one thread, at each of `batches`.
fn assert_same_outputs(reference: &compile::Model, model: &compile::Model, input_shape: &[usize], batches: &[usize]) {
    for &batch in batches {
        let input = random_input(batch as u64, batch, input_shape);
        let want = Session::with_schedule(reference, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
        for threads in [1, 2] {
            for schedule in [Schedule::Layerwise, Schedule::Depthwise] {
                let got = Session::with_schedule(model, threads, schedule, None).unwrap().run(&input.data, batch).unwrap();
                assert_eq!(got, want, "batch {batch}, {threads} threads, {schedule:?}");
            }
        }
    }
}

/// Int8 convolutions on AMX tiles (im2col of the padded image, then the tiles), at one sample
/// and batched, give what the sparse int8 kernels give, bit for bit, in either schedule.
#[test]
fn int8_convolutions_on_amx_tiles_compute_what_the_sparse_int8_kernels_do() {
    if !engine::kernels::q8amx::available(engine::kernels::Isa::detect()) {
        engine::testing::record_skip("int8 convolutions on AMX tiles (no AMX on this CPU)");
        return;
    }
    for graph in [quantized(bottleneck(61, 0.9)), quantized(cnn(62, 0.8))] {
        let sparse = compile::compile(graph.clone(), Options::new(KernelPolicy::Sparse).unwrap()).unwrap();
        let tiles =
            compile::compile(graph.clone(), Options { amx: compile::Amx::Always, ..Options::new(KernelPolicy::Auto).unwrap() }).unwrap();
        for one_sample in [true, false] {
            let on_tiles = tiles.layers.iter().any(|l| match &l.exec {
                compile::Exec::MatMul(m) => m.conv.is_some() && m.kernel(one_sample) == compile::Kernel::Int8Tiles,
                _ => false,
            });
            assert!(on_tiles, "some convolution runs on tiles (one sample: {one_sample})");
        }
        assert_same_outputs(&sparse, &tiles, &graph.input_shape, &[1, 3, 16]);
    }
}

#[test]
fn convolutions_with_full_rows_run_one_sample_per_tile_and_match_layerwise() {
    let graph = conv_stack(51, 0.9);
    let model = compile::compile(graph.clone(), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    let one_sample = model.layers.iter().all(|l| match &l.exec {
        compile::Exec::MatMul(m) => m.kernel(false) == compile::Kernel::Direct && m.kernel(true) == compile::Kernel::Direct,
        _ => true,
    });
    if one_sample {
        // AVX-512 with the direct kernel chosen for every convolution: one-sample tiles.
        assert_eq!(Session::with_schedule(&model, 2, Schedule::Auto, None).unwrap().plan(8).tile, 1);
        assert_eq!(Session::with_schedule(&model, 1, Schedule::Depthwise, None).unwrap().plan(64).tile, 1);
    }
    // LeNet-5's rows of 28 and 10 keep wider tiles.
    let lenet_model = compile::compile(lenet(52, 0.9), Options::new(KernelPolicy::Auto).unwrap()).unwrap();
    assert!(Session::with_schedule(&lenet_model, 2, Schedule::Auto, None).unwrap().plan(64).tile > 1);
    for batch in [2, 8, 17] {
        let input = random_input(batch as u64, batch, &graph.input_shape);
        let reference = Session::with_schedule(&model, 1, Schedule::Layerwise, None).unwrap().run(&input.data, batch).unwrap();
        for threads in [1, 2] {
            for budget in [None, Some(16 << 10)] {
                let got = Session::with_schedule(&model, threads, Schedule::Auto, budget).unwrap().run(&input.data, batch).unwrap();
                let err = rel_err(&got, &reference);
                assert!(err < 1e-5, "batch {batch}, {threads} threads, budget {budget:?}: relative error {err}");
            }
        }
    }
}

/// Pointwise convolutions fused into the depth-wise convolutions that read them (with ReLU6,
/// ReLU, and SiLU fused from `x * Sigmoid(x)`: all three blocks, whichever kernels the timed
/// policy chose) give the separate
/// layers' results within rounding (the fused expansion runs its matrix kernel on chunks of
/// channels where the layer alone may run the direct kernel), on every kernel policy, batch,
/// thread count and schedule.
#[test]
fn expansions_fused_into_depthwise_convolutions_give_the_separate_layers_results() {
    let graph = inverted_residual(61, 0.8);
    for policy in [KernelPolicy::Sparse, KernelPolicy::Dense, KernelPolicy::Auto] {
        let options = Options::new(policy).unwrap();
        let model = compile::compile(graph.clone(), options.clone()).unwrap();
        let separate = compile::compile(graph.clone(), Options { fuse_expansions: false, ..options }).unwrap();
        let fused =
            |m: &compile::Model| m.layers.iter().filter(|l| matches!(&l.exec, compile::Exec::GroupConv { expand: Some(_), .. })).count();
        assert_eq!((fused(&model), fused(&separate)), (3, 0), "{policy:?}: fused expansions");
        assert_eq!(separate.layers.len() - model.layers.len(), 3, "{policy:?}: the fused layers go");
        for batch in [1, 3, 17] {
            let input = random_input(batch as u64, batch, &graph.input_shape);
            for threads in [1, 2] {
                for (schedule, budget) in [(Schedule::Layerwise, None), (Schedule::Depthwise, None), (Schedule::Depthwise, Some(16 << 10))]
                {
                    let run =
                        |m: &compile::Model| Session::with_schedule(m, threads, schedule, budget).unwrap().run(&input.data, batch).unwrap();
                    let err = rel_err(&run(&model), &run(&separate));
                    assert!(err < 1e-5, "{policy:?} batch {batch} {threads} threads {schedule:?} {budget:?}: relative error {err}");
                }
            }
        }
    }
}

/// `model` and `other` (two compilations of `graph` under `policy`) at several batches, threads
/// and schedules: layer by layer on a fixed policy bit for bit; depth-wise and in row bands
/// (plans of their own), and on the timed policy (which may pick different kernels), within
/// rounding.
fn same_results(name: &str, graph: &engine::graph::Graph, policy: KernelPolicy, model: &compile::Model, other: &compile::Model) {
    for batch in [1, 3, 17, 64] {
        let input = random_input(batch as u64, batch, &graph.input_shape);
        for threads in [1, 2] {
            for (schedule, budget) in [(Schedule::Layerwise, None), (Schedule::Depthwise, None), (Schedule::Depthwise, Some(16 << 10))] {
                let run =
                    |m: &compile::Model| Session::with_schedule(m, threads, schedule, budget).unwrap().run(&input.data, batch).unwrap();
                let (got, want) = (run(model), run(other));
                let label = format!("{name} {policy:?} batch {batch} {threads} threads {schedule:?} {budget:?}");
                if policy != KernelPolicy::Auto && schedule == Schedule::Layerwise {
                    assert!(got == want, "{label}: relative error {}", rel_err(&got, &want));
                } else {
                    assert!(rel_err(&got, &want) < 1e-5, "{label}: relative error {}", rel_err(&got, &want));
                }
            }
        }
    }
}

#[test]
fn concatenations_written_in_place_give_the_copies_results() {
    // YOLOv5's joins (one input also read by a later join, a chain of pools all joined) and
    // MobileNet's (an input also read by two other layers). Layer by layer on the fixed
    // policies, bit for bit the model whose joins copy; depth-wise and in row bands, and on the
    // timed policy (two compilations may pick different kernels), within rounding.
    for (name, graph) in [("concats", concats(61, 0.8)), ("mobile", mobile(62, 0.8))] {
        for policy in [KernelPolicy::Sparse, KernelPolicy::Dense, KernelPolicy::Auto] {
            let options = Options::new(policy).unwrap();
            let model = compile::compile(graph.clone(), options.clone()).unwrap();
            let copies = compile::compile(graph.clone(), Options { concat_in_place: false, ..options }).unwrap();
            same_results(name, &graph, policy, &model, &copies);
        }
    }
}

#[test]
fn residual_additions_fused_into_layers_give_the_separate_additions_results() {
    // Bottleneck blocks (each addition fuses into the projection, stride 1 and stride 2, whose
    // other operand is ready first), a residual CNN (into a 3x3 convolution), and MobileNet's
    // blocks. On the fixed
    // kernel policies, layer by layer, bit for bit the model with the additions kept; depth-wise
    // and in row bands (plans of their own) within rounding; on the timed policy, where two
    // compilations may pick different kernels, within rounding.
    let graphs = [("bottleneck", bottleneck(51, 0.9)), ("cnn", cnn(52, 0.8)), ("mobile", mobile(53, 0.8))];
    let mut fused = 0;
    for (name, graph) in graphs {
        for policy in [KernelPolicy::Sparse, KernelPolicy::Dense, KernelPolicy::Auto] {
            let options = Options::new(policy).unwrap();
            let model = compile::compile(graph.clone(), options.clone()).unwrap();
            let separate = compile::compile(graph.clone(), Options { fuse_residuals: false, ..options }).unwrap();
            let adds = |m: &compile::Model| m.layers.iter().filter(|l| matches!(l.exec, compile::Exec::Add { .. })).count();
            fused += adds(&separate) - adds(&model);
            same_results(name, &graph, policy, &model, &separate);
        }
    }
    assert!(fused > 0, "no addition was fused: the test compared nothing");
}
