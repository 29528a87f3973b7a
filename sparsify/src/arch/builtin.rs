//! The built-in architectures a recipe's `[model]` table names, each a short description
//! adapted to the data's image size and classes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Builder, Desc, ParamValues};

/// Which architecture, with its sizes (the `[model]` table of a recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase", deny_unknown_fields)]
pub enum Arch {
    /// Fully connected ReLU network on flattened images; LeNet-300-100 by default.
    Mlp {
        #[serde(default = "default_hidden")]
        hidden: Vec<usize>,
    },
    /// LeNet-5: conv 5x5 (6, padded) - maxpool - conv 5x5 (16) - maxpool - 120 - 84 - classes.
    Lenet5,
    /// A small residual CNN with BatchNorm: conv 3x3 (16) + BN + ReLU - maxpool - a residual
    /// block (conv-BN-ReLU-conv-BN, plus the block's input, ReLU) - maxpool - linear.
    Rescnn,
    /// He et al.'s CIFAR ResNet-20: conv 3x3 (16) + BN + ReLU, three stages of 16, 32 and 64
    /// channels with 3 basic blocks each (the first block of stages 2 and 3 at stride 2, its
    /// shortcut a 1x1 convolution + BN), global average pool, linear.
    Resnet20,
    /// VGG-11's pattern at a quarter of its widths, for small images: eight 3x3 conv + BN + ReLU
    /// (16, pool, 32, pool, 64, 64, pool, 128, 128, pool, 128, 128, pool; a pool only while the
    /// image is at least 2 pixels wide), then linear 256 - ReLU - linear.
    Vgg11,
    /// A small MobileNetV2: conv 3x3 (16) + BN + ReLU6, inverted residual blocks (1x1 expansion
    /// by 4 + BN + ReLU6, 3x3 depth-wise + BN + ReLU6, 1x1 projection + BN, the block's input
    /// added where the shape allows) of 16, 24 (x2, stride 2), 32 (x2, stride 2) and 64 (x2,
    /// stride 2) channels, 1x1 conv (128) + BN + ReLU6, global average pool, linear.
    Mobilenet,
    /// A model read from an ONNX file (`[model] onnx = "model.onnx"`): its layers, and its
    /// weights unless `init = "random"`.
    Onnx {
        onnx: PathBuf,
        #[serde(default)]
        init: Init,
    },
}

/// Where an ONNX model's weights start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The file's values (sparse transfer learning).
    #[default]
    Pretrained,
    /// A fresh initialisation from the seed, as for the built-ins.
    Random,
}

fn default_hidden() -> Vec<usize> {
    vec![300, 100]
}

impl Arch {
    /// The network for images `[channels, rows, cols]` and `classes` classes (an ONNX model's
    /// own, checked to read such images).
    pub fn describe(&self, input: [usize; 3], classes: usize) -> Result<Desc, String> {
        self.describe_pretrained(input, classes).map(|(desc, _)| desc)
    }

    /// `describe`, with the parameters' starting values where they come from a file (in plan
    /// order; a classifier resized for other classes does not take them: `Network::new`), from
    /// one reading of the file.
    pub fn describe_pretrained(&self, input: [usize; 3], classes: usize) -> Result<(Desc, Option<ParamValues>), String> {
        let image = input.to_vec();
        let desc = match self {
            Arch::Mlp { hidden } => mlp(input.iter().product(), hidden, classes),
            Arch::Lenet5 => lenet5(image, classes),
            Arch::Rescnn => rescnn(image, classes),
            Arch::Resnet20 => resnet20(image, classes),
            Arch::Vgg11 => vgg11(image, classes),
            Arch::Mobilenet => mobilenet(image, classes),
            Arch::Onnx { onnx, init } => return onnx_model(onnx, *init, image, classes),
        };
        Ok((desc, None))
    }

    /// An ONNX model's own input (`[channels, rows, cols]`; features as `[1, 1, n]`) and
    /// classes; `None` for the built-ins, which adapt to the data.
    pub fn own_shape(&self) -> Result<Option<([usize; 3], usize)>, String> {
        let Arch::Onnx { onnx, .. } = self else { return Ok(None) };
        let desc = super::onnx::read(onnx)?.0;
        let input = match desc.input[..] {
            [c, h, w] => [c, h, w],
            [n] => [1, 1, n],
            _ => return Err(format!("{} reads {:?} per sample (training reads images or features)", onnx.display(), desc.input)),
        };
        let shapes = desc.shapes()?;
        match shapes.last().map(Vec::as_slice) {
            Some(&[classes]) => Ok(Some((input, classes))),
            other => Err(format!("{} gives {other:?} per sample, not class scores", onnx.display())),
        }
    }

    /// Whether the network can be built for `input` images (see `Desc::plan`).
    pub fn check(&self, input: [usize; 3], classes: usize) -> Result<(), String> {
        if let Arch::Mlp { hidden } = self
            && hidden.contains(&0)
        {
            return Err(format!("every layer needs at least one unit, found {hidden:?}"));
        }
        self.describe(input, classes)?.plan(classes).map(|_| ())
    }

    /// A short name for tables: `mlp-300-100`, `lenet5`, `resnet20`.
    pub fn label(&self) -> String {
        match self {
            Arch::Mlp { hidden } => format!("mlp-{}", hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-")),
            other => serde_json::to_value(other).ok().and_then(|v| v["name"].as_str().map(String::from)).unwrap_or_default(),
        }
    }
}

/// The model in `onnx` for `image` inputs, a last linear layer resized for `classes` (its
/// fresh weights: `Network::new`), and the file's values unless `init` is random.
fn onnx_model(onnx: &std::path::Path, init: Init, image: Vec<usize>, classes: usize) -> Result<(Desc, Option<ParamValues>), String> {
    let (mut desc, values) = super::onnx::read(onnx)?;
    let elements = |s: &[usize]| s.iter().product::<usize>();
    let fits = desc.input == image || (desc.input.len() == 1 && elements(&desc.input) == elements(&image));
    if !fits {
        return Err(format!("{} reads {:?} per sample, the data are {image:?}", onnx.display(), desc.input));
    }
    if let Some(super::Layer { op: super::LayerOp::Linear { out }, .. }) = desc.layers.last_mut() {
        *out = classes;
    }
    Ok((desc, (init == Init::Pretrained).then_some(values)))
}

/// Linear layers `fc1`, `fc2`, ... with ReLU between them, on flat inputs.
fn mlp(features: usize, hidden: &[usize], classes: usize) -> Desc {
    let mut b = Builder::new(vec![features]);
    for (i, &units) in hidden.iter().enumerate() {
        b.linear(&format!("fc{}", i + 1), units).relu();
    }
    b.linear(&format!("fc{}", hidden.len() + 1), classes).build()
}

fn lenet5(image: Vec<usize>, classes: usize) -> Desc {
    let mut b = Builder::new(image);
    b.conv("conv1", 6, 5, 1, 2).relu().max_pool(2, 2);
    b.conv("conv2", 16, 5, 1, 0).relu().max_pool(2, 2).flatten();
    b.linear("fc1", 120).relu().linear("fc2", 84).relu().linear("fc3", classes).build()
}

fn rescnn(image: Vec<usize>, classes: usize) -> Desc {
    let mut b = Builder::new(image);
    b.conv("conv1", 16, 3, 1, 1).batchnorm("bn1").relu().max_pool(2, 2);
    let block_input = b.current();
    b.conv("conv2", 16, 3, 1, 1).batchnorm("bn2").relu();
    b.conv("conv3", 16, 3, 1, 1).batchnorm("bn3").add("residual", block_input).relu();
    b.max_pool(2, 2).flatten().linear("fc", classes).build()
}

/// A basic block: two 3x3 conv + BN, the block's input (or its 1x1 projection where the
/// shape changes) added before the last ReLU.
fn basic_block(b: &mut Builder, name: &str, input_channels: usize, out: usize, stride: usize) {
    let input = b.current();
    let shortcut = if stride != 1 || input_channels != out {
        b.conv_bn(&format!("{name}.shortcut.conv"), &format!("{name}.shortcut.bn"), out, 1, stride, 1);
        b.current()
    } else {
        input
    };
    b.from(input).conv_bn(&format!("{name}.conv1"), &format!("{name}.bn1"), out, 3, stride, 1).relu();
    b.conv_bn(&format!("{name}.conv2"), &format!("{name}.bn2"), out, 3, 1, 1);
    b.add(&format!("{name}.add"), shortcut).relu();
}

fn resnet20(image: Vec<usize>, classes: usize) -> Desc {
    let mut b = Builder::new(image);
    b.conv_bn("conv1", "bn1", 16, 3, 1, 1).relu();
    let mut channels = 16;
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..3 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            basic_block(&mut b, &format!("layer{}.{block}", stage + 1), channels, width, stride);
            channels = width;
        }
    }
    b.global_avg_pool().flatten().linear("fc", classes).build()
}

fn vgg11(image: Vec<usize>, classes: usize) -> Desc {
    let mut side = image[1].min(image[2]);
    let mut b = Builder::new(image);
    let mut conv = 0;
    for width in [16, 0, 32, 0, 64, 64, 0, 128, 128, 0, 128, 128, 0] {
        if width == 0 {
            if side >= 2 {
                b.max_pool(2, 2);
                side /= 2;
            }
            continue;
        }
        conv += 1;
        b.conv_bn(&format!("conv{conv}"), &format!("bn{conv}"), width, 3, 1, 1).relu();
    }
    b.flatten().linear("fc1", 256).relu().linear("fc2", classes).build()
}

/// An inverted residual block: expansion, depth-wise convolution, projection; the input added
/// where stride and widths keep the shape.
fn inverted_residual(b: &mut Builder, name: &str, input_channels: usize, out: usize, expansion: usize, stride: usize) {
    let input = b.current();
    let hidden = input_channels * expansion;
    if expansion != 1 {
        b.conv_bn(&format!("{name}.expand"), &format!("{name}.expand_bn"), hidden, 1, 1, 1).relu6();
    }
    b.conv_bn(&format!("{name}.depthwise"), &format!("{name}.depthwise_bn"), hidden, 3, stride, hidden).relu6();
    b.conv_bn(&format!("{name}.project"), &format!("{name}.project_bn"), out, 1, 1, 1);
    if stride == 1 && input_channels == out {
        b.add(&format!("{name}.add"), input);
    }
}

fn mobilenet(image: Vec<usize>, classes: usize) -> Desc {
    let mut b = Builder::new(image);
    b.conv_bn("conv1", "bn1", 16, 3, 1, 1).relu6();
    let mut channels = 16;
    let mut index = 0;
    for (expansion, width, repeats, stride) in [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 2)] {
        for r in 0..repeats {
            inverted_residual(&mut b, &format!("block{index}"), channels, width, expansion, if r == 0 { stride } else { 1 });
            channels = width;
            index += 1;
        }
    }
    b.conv_bn("conv_last", "bn_last", 128, 1, 1, 1).relu6();
    b.global_avg_pool().flatten().linear("fc", classes).build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ParamKind;

    /// Each built-in plans on 28x28 and 32x32 images of one and three channels; the parameter counts are the
    /// architectures' (ResNet-20: the 269,722 of He et al.'s CIFAR model with identity
    /// shortcuts, less its first convolution's two other input channels, plus the two 1x1
    /// projection shortcuts and their BatchNorms).
    #[test]
    fn built_ins_plan_with_their_parameter_counts() {
        let weights = |arch: &Arch, side| -> usize {
            let plan = arch.describe([1, side, side], 10).unwrap().plan(10).unwrap();
            plan.params
                .iter()
                .filter(|p| p.kind != ParamKind::RunningMean && p.kind != ParamKind::RunningVar)
                .map(|p| p.shape.iter().product::<usize>())
                .sum()
        };
        assert_eq!(weights(&Arch::Mlp { hidden: vec![300, 100] }, 28), 266_610);
        assert_eq!(weights(&Arch::Lenet5, 28), 61_706);
        assert_eq!(weights(&Arch::Resnet20, 32), 269_722 - 2 * 16 * 9 + (16 * 32 + 32 * 64) + 2 * (32 + 64));
        for arch in [Arch::Rescnn, Arch::Resnet20, Arch::Vgg11, Arch::Mobilenet] {
            for side in [28, 32] {
                arch.check([1, side, side], 10).unwrap_or_else(|e| panic!("{arch:?} at {side}: {e}"));
                arch.check([3, side, side], 100).unwrap_or_else(|e| panic!("{arch:?} at 3x{side}: {e}"));
            }
        }
        assert_eq!(Arch::Resnet20.label(), "resnet20");
        assert_eq!(Arch::Mlp { hidden: vec![300, 100] }.label(), "mlp-300-100");
    }
}
