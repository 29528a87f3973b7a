//! Times burn's conv2d forward and forward + backward at ResNet-20's shapes (batch 128).
use std::time::Instant;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let shapes = [(16, 16, 28, 1), (16, 32, 28, 2), (32, 32, 14, 1), (64, 64, 7, 1)];
    for (cin, cout, side, stride) in shapes {
        let eval = Device::flex();
        let train = Device::flex().autodiff();
        let b = 128;
        let opts = ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
        let run = |device: &Device, backward: bool, ours: bool| {
            let x = Tensor::<4>::random([b, cin, side, side], Distribution::Default, device);
            let w = Tensor::<4>::random([cout, cin, 3, 3], Distribution::Default, device);
            let (x, w) = if backward { (x.require_grad(), w.require_grad()) } else { (x, w) };
            let t = Instant::now();
            let y = if ours {
                sparsify::ops::conv::conv2d(x.clone(), w.clone(), None, stride, 1, 1)
            } else {
                conv2d(x.clone(), w.clone(), None, opts.clone())
            };
            if backward {
                let g = y.sum().backward();
                let _ = w.grad(&g).unwrap().into_data();
                let _ = x.grad(&g).unwrap().into_data();
            } else {
                let _ = y.into_data();
            }
            t.elapsed().as_secs_f64() * 1e3
        };
        for ours in [false, true] {
            let fwd = median((0..7).map(|_| run(&eval, false, ours)).collect());
            let both = median((0..7).map(|_| run(&train, true, ours)).collect());
            let who = if ours { "sparsify" } else { "burn" };
            println!("{who:>8} conv {cin}->{cout} {side}x{side} stride {stride}: forward {fwd:.1} ms, forward+backward {both:.1} ms");
        }
    }
}
