//! Element-wise operations on two values (NumPy broadcasting), each whole in one file: its
//! definition on one pair of values and whether it reads or writes booleans. The `operations!`
//! list at the bottom is the registry: it makes `BinaryKind` (kept in the native format as the
//! variant's name in snake case), the ONNX operator of the same name each reads and writes, and
//! each one's loops over tiles.

use crate::kernels::Isa;
use crate::kernels::elementwise::{Args, binary_on};

/// What a file of this module defines for its operation `p op q`.
pub(crate) trait Operation: 'static {
    /// It writes booleans (0 or 1), which a Cast to an integer type leaves as they are.
    const BOOLEAN: bool = false;
    /// It reads booleans: written back to ONNX with its inputs cast to bool.
    const LOGICAL_INPUTS: bool = false;

    /// `p op q`: the definition every loop is checked against, bit for bit.
    fn value(p: f32, q: f32) -> f32;
}

/// `y = a op b`, or `b op a` with `swap` (a constant on the left): each operation and order
/// has its own copy of the loops, chosen once outside them.
fn run<K: Operation>(isa: Isa, args: Args, y: &mut [f32], swap: bool) {
    if swap { binary_on(isa, args, y, |p, q| K::value(q, p)) } else { binary_on(isa, args, y, K::value) }
}

macro_rules! operations {
    ($($file:ident :: $name:ident),* $(,)?) => {
        $(mod $file;)*

        /// An element-wise operation on two values (one file of `crate::ops::binary` each).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum BinaryKind {
            $($name,)*
        }

        impl BinaryKind {
            /// Every operation, in the registry's order.
            pub const ALL: &'static [BinaryKind] = &[$(BinaryKind::$name),*];

            /// `p op q` for one pair of values.
            #[inline]
            pub fn value(self, p: f32, q: f32) -> f32 {
                match self { $(BinaryKind::$name => <$file::$name as Operation>::value(p, q),)* }
            }
            /// The ONNX operator it reads and is written as: its own name.
            pub fn onnx(self) -> &'static str {
                match self { $(BinaryKind::$name => stringify!($name),)* }
            }
            /// It writes booleans (0 or 1).
            pub fn is_boolean(self) -> bool {
                match self { $(BinaryKind::$name => <$file::$name as Operation>::BOOLEAN,)* }
            }
            /// It reads booleans (ONNX's And and Or take bool inputs).
            pub fn reads_booleans(self) -> bool {
                match self { $(BinaryKind::$name => <$file::$name as Operation>::LOGICAL_INPUTS,)* }
            }
            /// The operation an ONNX node of type `op` computes, if one of these.
            pub fn from_onnx(op: &str) -> Option<BinaryKind> {
                BinaryKind::ALL.iter().copied().find(|k| k.onnx() == op)
            }
            /// `y = a op b` (`b op a` with `swap`) over tiles (`kernels::elementwise::binary`).
            pub(crate) fn run(self, isa: Isa, args: Args, y: &mut [f32], swap: bool) {
                match self { $(BinaryKind::$name => run::<$file::$name>(isa, args, y, swap),)* }
            }
        }
    };
}

operations! {
    add::Add,
    sub::Sub,
    mul::Mul,
    div::Div,
    pow::Pow,
    and::And,
    or::Or,
    equal::Equal,
    less::Less,
    less_or_equal::LessOrEqual,
    greater::Greater,
    greater_or_equal::GreaterOrEqual,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::elementwise::{Operand, binary, broadcast_strides, stretches};

    /// Every operation, in both orders, with a value or a constant operand, on every level this
    /// CPU has, gives its definition's bits (values include zeros, equal pairs and negatives).
    #[test]
    fn every_operation_matches_its_definition_on_every_level() {
        let (shape, w) = ([3usize, 7], 5);
        let n = 21 * w;
        let a: Vec<f32> = (0..n).map(|i| [0.0, 1.0, -2.5, 3.0, 0.5][i % 5] * (1 + i % 3) as f32).collect();
        let b: Vec<f32> = (0..n).map(|i| [1.0, 0.0, -2.5, 3.0, 2.0, 0.5][i % 6]).collect();
        let c: Vec<f32> = (0..21).map(|i| [2.0, 0.0, -1.0, 3.0][i % 4]).collect();
        let strides = broadcast_strides(&shape, 2);
        let parts = stretches(&shape, &strides, &strides).1;
        for &kind in BinaryKind::ALL {
            for swap in [false, true] {
                let order = |p: f32, q: f32| if swap { kind.value(q, p) } else { kind.value(p, q) };
                let with_tile: Vec<u32> = a.iter().zip(&b).map(|(&p, &q)| order(p, q).to_bits()).collect();
                let with_constant: Vec<u32> = (0..n).map(|i| order(a[i], c[i / w]).to_bits()).collect();
                for isa in Isa::available() {
                    for (operand, want) in [(Operand::Tile(&b), &with_tile), (Operand::Constant(&c), &with_constant)] {
                        let mut y = vec![f32::NAN; n];
                        binary(isa, kind, &shape, &a, &strides, operand, &strides, swap, w, &mut y, 0..parts);
                        let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(&got, want, "{kind:?} swapped {swap} on {isa:?}");
                    }
                }
            }
        }
    }

    /// The native format keeps each operation as its name in snake case, as before the registry.
    #[test]
    fn the_native_format_names_each_operation_as_before() {
        let names = ["add", "sub", "mul", "div", "pow", "and", "or", "equal", "less", "less_or_equal", "greater", "greater_or_equal"];
        assert_eq!(BinaryKind::ALL.len(), names.len());
        for (&kind, name) in BinaryKind::ALL.iter().zip(names) {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{name}\""));
            assert_eq!(BinaryKind::from_onnx(kind.onnx()), Some(kind));
        }
    }
}
