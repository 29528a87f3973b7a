//! Post-training int8 quantization of an fp32 MLP (linear layers and ReLUs, as the peers'
//! `mlp3x2048_s*.onnx`), for benchmarking int8 on the same file in the engine, ONNX Runtime and
//! DeepSparse: symmetric int8 weights per output row, and each layer's input quantized to uint8
//! over the range it takes on 64 calibration samples; written in QDQ form by the engine's ONNX
//! exporter. Zeros stay zeros, so the sparsity is kept.
//!
//! Usage: cargo run --release -p engine --example quantize_mlp -- IN.onnx OUT.onnx

use std::path::Path;

use anyhow::{Context, bail};
use engine::graph::{Activation, Op, Quant};

/// Calibration samples, uniform in [-1, 1] like `engine bench`'s inputs.
const SAMPLES: usize = 64;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = &args[..] else { bail!("usage: quantize_mlp IN.onnx OUT.onnx") };
    let mut graph = engine::load(Path::new(input))?;
    let features: usize = graph.input_shape.iter().product();
    let mut x: Vec<Vec<f32>> =
        (0..SAMPLES).map(|s| (0..features).map(|i| (((s * features + i) * 7919) % 1009) as f32 / 504.5 - 1.0).collect()).collect();
    for node in &mut graph.nodes {
        match &mut node.op {
            Op::Linear { weight, bias, act } => {
                let (rows, cols) = (weight.rows(), weight.cols());
                // The input's range (with 0 inside it, as uint8 with a zero point needs).
                let (lo, hi) = x.iter().flatten().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                let input_scale = ((hi - lo) / 255.0).max(1e-8);
                let input_zero = (-lo / input_scale).round().clamp(0.0, 255.0) as u8;
                let scales: Vec<f32> =
                    weight.data.chunks(cols).map(|r| (r.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0).max(1e-12)).collect();
                for (i, v) in weight.data.iter_mut().enumerate() {
                    *v = (*v / scales[i / cols]).round().clamp(-127.0, 127.0) * scales[i / cols];
                }
                let relu = *act == Activation::Relu;
                x = x
                    .iter()
                    .map(|s| {
                        (0..rows)
                            .map(|o| {
                                let v = bias[o] + weight.data[o * cols..(o + 1) * cols].iter().zip(s).map(|(w, a)| w * a).sum::<f32>();
                                if relu { v.max(0.0) } else { v }
                            })
                            .collect()
                    })
                    .collect();
                weight.quant = Some(Quant { scales, input_scale, input_zero });
            }
            Op::Relu => x.iter_mut().flatten().for_each(|v| *v = v.max(0.0)),
            other => bail!("node '{}': {} is not supported here (linear layers and ReLUs only)", node.name, other.kind()),
        }
    }
    let bytes = engine::onnx::export::export(&graph, &graph.output_shape()?);
    std::fs::write(output, bytes).with_context(|| format!("writing {output}"))?;
    println!("{output}: {} int8 linear layers", graph.nodes.iter().filter(|n| matches!(n.op, Op::Linear { .. })).count());
    Ok(())
}
