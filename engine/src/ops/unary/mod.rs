//! Element-wise functions of one value, each whole in one file: the ONNX operator it reads, its
//! definition on one value, its loop over a tile and the ONNX nodes it is written back as. The
//! `functions!` list at the bottom is the registry: it makes `Unary` (the graph's element-wise
//! operator, kept in the native format as `{"fn": "<name in snake case>", fields...}`), every
//! dispatch over it, and the importer's entries for these operators.

use crate::error::Result;
use crate::kernels::Isa;
use crate::kernels::elementwise::{each_value, each_value_in_place};
use crate::onnx::export::Builder;
use crate::onnx::import::OnnxNode;

/// What a file of this module defines for its function `f`.
pub(crate) trait ElementWise: Copy + Default + Into<Unary> + 'static {
    /// The ONNX operators read as this function (none for those a pass or a Cast makes).
    const ONNX: &'static [&'static str] = &[];
    /// Its values are 0 or 1 (a boolean), which a Cast to an integer type leaves as they are.
    const BOOLEAN: bool = false;
    /// The lowest ONNX opset with the operators `write` uses.
    const OPSET: i64 = 13;
    /// Instances the tests check on every instruction set (each attribute's cases).
    const EXAMPLES: &'static [Self];

    /// The function of `node`, an operator of `ONNX` (by default the one without attributes).
    fn read(_node: &OnnxNode) -> Result<Self> {
        Ok(Self::default())
    }
    /// `f(x)`: the scalar definition every loop is checked against, bit for bit.
    fn value(self, x: f32) -> f32;
    /// `y[i] = f(x[i])` over a tile: each function's loop is a function of its own (one loop with
    /// a `match` inside ran with a jump per element, ReLU6 at 1.2 ns an element instead of 0.25),
    /// compiled for AVX-512 and AVX2 too, where `exp` vectorizes 16 or 8 lanes wide.
    fn apply(self, isa: Isa, x: &[f32], y: &mut [f32]) {
        each_value(isa, x, y, move |v| self.value(v))
    }
    /// `y[i] = f(y[i])`: a function fused into the layer before it.
    fn apply_in_place(self, isa: Isa, y: &mut [f32]) {
        each_value_in_place(isa, y, move |v| self.value(v))
    }
    /// ONNX nodes computing `f(x)` into `out`: by default one node of the first of `ONNX`,
    /// without attributes (a function with attributes or without an ONNX operator writes its own).
    fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
        let op = Self::ONNX.first().expect("a function without an ONNX operator writes its own nodes");
        b.node(op, name, vec![x], out, vec![]);
    }
}

macro_rules! functions {
    ($($file:ident :: $name:ident),* $(,)?) => {
        $(mod $file; pub use $file::$name;)*

        /// An element-wise function of one value (one file of `crate::ops` each).
        #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "fn", rename_all = "snake_case")]
        pub enum Unary {
            $($name($name),)*
        }

        $(impl From<$name> for Unary {
            fn from(f: $name) -> Unary {
                Unary::$name(f)
            }
        })*

        impl Unary {
            /// `f(x)` for one value.
            #[inline]
            pub fn value(self, x: f32) -> f32 {
                match self { $(Unary::$name(f) => f.value(x),)* }
            }
            /// `y = f(x)` over a tile, the loop compiled for `isa`.
            pub fn apply(self, isa: Isa, x: &[f32], y: &mut [f32]) {
                match self { $(Unary::$name(f) => f.apply(isa, x, y),)* }
            }
            /// `y = f(y)` over a tile, the loop compiled for `isa`.
            pub fn apply_in_place(self, isa: Isa, y: &mut [f32]) {
                match self { $(Unary::$name(f) => f.apply_in_place(isa, y),)* }
            }
            /// ONNX nodes computing `f(x)` into `out`.
            pub(crate) fn write(self, b: &mut Builder, name: &str, x: String, out: &str) {
                match self { $(Unary::$name(f) => f.write(b, name, x, out),)* }
            }
            /// Its values are 0 or 1.
            pub fn is_boolean(self) -> bool {
                match self { $(Unary::$name(_) => <$name as ElementWise>::BOOLEAN,)* }
            }
            /// The lowest ONNX opset that writes it.
            pub fn opset(self) -> i64 {
                match self { $(Unary::$name(_) => <$name as ElementWise>::OPSET,)* }
            }
            /// The function an ONNX node of type `op` computes, where one of these reads it.
            pub(crate) fn read(op: &str, node: &OnnxNode) -> Option<Result<Unary>> {
                $(if <$name as ElementWise>::ONNX.contains(&op) {
                    return Some(<$name as ElementWise>::read(node).map(Unary::from));
                })*
                None
            }
            /// The ONNX operators read as these functions, in the registry's order.
            pub fn onnx_operators() -> impl Iterator<Item = &'static str> {
                [$(<$name as ElementWise>::ONNX),*].into_iter().flatten().copied()
            }
            /// Every function's examples (`ElementWise::EXAMPLES`), for the tests.
            pub fn examples() -> impl Iterator<Item = Unary> {
                [$(<$name as ElementWise>::EXAMPLES.iter().map(|&f| Unary::from(f)).collect::<Vec<Unary>>()),*].into_iter().flatten()
            }
        }
    };
}

functions! {
    clip::Clip,
    sigmoid::Sigmoid,
    silu::Silu,
    hard_sigmoid::HardSigmoid,
    hard_swish::HardSwish,
    leaky_relu::LeakyRelu,
    tanh::Tanh,
    erf::Erf,
    gelu::Gelu,
    sqrt::Sqrt,
    is_nan::IsNaN,
    boolean::Bool,
    not::Not,
    zero_nan::ZeroNaN,
    fake_quant::FakeQuant,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every function's loop, compiled for each level this CPU has, gives what its scalar
    /// definition gives, on values from -100 to 100 (exp's clamps included) and lengths that
    /// leave vector tails.
    #[test]
    fn every_function_matches_its_definition_on_every_level() {
        for n in [1, 15, 17, 1003] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7919 + 0.013).sin() * 100.0 * (i % 7) as f32 / 6.0).collect();
            for f in Unary::examples() {
                let want: Vec<f32> = x.iter().map(|&v| f.value(v)).collect();
                for isa in Isa::available() {
                    let mut got = vec![0.0; n];
                    f.apply(isa, &x, &mut got);
                    let same = |got: &[f32]| got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
                    assert!(same(&got), "{f:?} on {isa:?}, {n} values");
                    let mut in_place = x.clone();
                    f.apply_in_place(isa, &mut in_place);
                    assert!(same(&in_place), "{f:?} in place on {isa:?}, {n} values");
                }
            }
        }
    }

    /// The native format keeps each function as its variant's name in snake case with its fields,
    /// as files written before the registry hold them, and reads it back.
    #[test]
    fn the_native_format_names_each_function_as_before() {
        let written = [
            (Unary::Clip(Clip { lo: 0.0, hi: 6.0 }), r#"{"fn":"clip","lo":0.0,"hi":6.0}"#),
            (Unary::Sigmoid(Sigmoid), r#"{"fn":"sigmoid"}"#),
            (Unary::Silu(Silu), r#"{"fn":"silu"}"#),
            (Unary::HardSigmoid(HardSigmoid { alpha: 0.2, beta: 0.5 }), r#"{"fn":"hard_sigmoid","alpha":0.2,"beta":0.5}"#),
            (Unary::HardSwish(HardSwish), r#"{"fn":"hard_swish"}"#),
            (Unary::LeakyRelu(LeakyRelu { alpha: 0.1 }), r#"{"fn":"leaky_relu","alpha":0.1}"#),
            (Unary::Tanh(Tanh), r#"{"fn":"tanh"}"#),
            (Unary::Erf(Erf), r#"{"fn":"erf"}"#),
            (Unary::Gelu(Gelu { tanh: true }), r#"{"fn":"gelu","tanh":true}"#),
            (Unary::Sqrt(Sqrt), r#"{"fn":"sqrt"}"#),
            (Unary::IsNaN(IsNaN), r#"{"fn":"is_na_n"}"#),
            (Unary::Bool(Bool), r#"{"fn":"bool"}"#),
            (Unary::Not(Not), r#"{"fn":"not"}"#),
        ];
        for (f, json) in written {
            assert_eq!(serde_json::to_string(&f).unwrap(), json);
            assert_eq!(serde_json::from_str::<Unary>(json).unwrap(), f);
        }
        assert!(serde_json::from_str::<Unary>(r#"{"fn":"cube"}"#).is_err());
        // An unbounded side of a Clip (ReLU as `Clip(min = 0)`) is left out: JSON has no infinity.
        let relu = Unary::Clip(Clip { lo: 0.0, hi: f32::INFINITY });
        assert_eq!(serde_json::to_string(&relu).unwrap(), r#"{"fn":"clip","lo":0.0}"#);
        assert_eq!(serde_json::from_str::<Unary>(r#"{"fn":"clip","lo":0.0}"#).unwrap(), relu);
    }
}
