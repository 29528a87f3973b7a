//! Times the depth-wise convolution kernels on MobileNetV2's and EfficientNet's 3x3 and 5x5
//! layers at one sample, one thread: `cargo run --release -p engine --example depthwise_convs`.

use engine::graph::Window;
use engine::kernels::window::Geometry;
use engine::kernels::{Isa, depthwise, grouped};

fn main() {
    let isa = Isa::detect();
    // (channels, input size, kernel, stride)
    let layers = [
        (32, 112, 3, 1),
        (96, 112, 3, 2),
        (144, 56, 3, 1),
        (144, 56, 3, 2),
        (192, 28, 3, 1),
        (384, 14, 3, 1),
        (576, 14, 3, 2),
        (960, 7, 3, 1),
        (240, 28, 5, 1),
        (672, 14, 5, 2),
    ];
    for (c, size, k, stride) in layers {
        let pad = k / 2;
        let window = Window { kernel: [k, k], stride: [stride, stride], pads: [pad; 4], dilation: [1, 1], ceil_mode: false };
        let out = (size + 2 * pad - k) / stride + 1;
        let g = Geometry { channels: c, in_hw: [size, size], out_hw: [out, out], window, w: 1 };
        let weight: Vec<f32> = (0..c * k * k).map(|i| ((i * 7919) % 1009) as f32 / 504.5 - 1.0).collect();
        let bias = vec![0.1f32; c];
        let x: Vec<f32> = (0..c * size * size).map(|i| ((i * 7919) % 1013) as f32 / 506.5 - 1.0).collect();
        let mut y = vec![0.0f32; c * out * out];
        let time = |f: &mut dyn FnMut(&mut [f32])| {
            let mut y = vec![0.0f32; c * out * out];
            let mut best = f64::MAX;
            for _ in 0..30 {
                let t = std::time::Instant::now();
                f(&mut y);
                best = best.min(t.elapsed().as_secs_f64());
            }
            best * 1e6
        };
        let grouped = time(&mut |y| grouped::group_conv(&g, c, &weight, &bias, &x, y, 0..c, true));
        let new = if depthwise::takes(isa, &g) {
            time(&mut |y| depthwise::depthwise(isa, &g, &weight, &bias, &x, y, 0..c, true, None))
        } else {
            f64::NAN
        };
        let gflop = (c * out * out * k * k * 2) as f64 / 1e3;
        println!(
            "{c:4}ch {size:3}x{size:<3} k{k} s{stride}: grouped {grouped:8.1} us  depthwise {new:8.1} us ({:.1} GFLOP/s)",
            gflop / new
        );
        y.fill(0.0);
    }
}
