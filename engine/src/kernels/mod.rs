//! Every compute kernel of the engine and the choice of instruction set. Each optimised kernel
//! has a plain scalar twin (`*_ref`) that the tests compare it with; variants for AVX2+FMA and
//! AVX-512 are chosen at run time from what the CPU supports, or forced with `ENGINE_ISA`.
//!
//! Layout convention for activations: feature-major tiles. A tile of `w` samples holding `k`
//! features is `[k, w]` row-major: feature `f` of sample `s` is at `f * w + s`.

// Kernels take the matrix, bias, input, width, output, rows and flags explicitly, as XNNPACK's do.
#![allow(clippy::too_many_arguments)]

pub mod bcsr;
pub mod csr;
pub mod dense;
pub mod depthwise;
pub mod direct;
pub mod elementwise;
pub mod flat;
pub mod grouped;
pub mod kblocked;
pub mod lines;
pub mod q8;
pub mod q8amx;
pub mod q8conv;
pub mod q8direct;
pub mod sequence;
pub mod spmm;
pub mod spmv;
pub mod transpose;
pub mod window;
pub mod winograd;

use std::sync::OnceLock;

/// A mutable buffer that the parts of one kernel call, on several threads, write at once, each
/// its own elements (output columns, rows or channels, its own scratch).
pub(crate) struct SharedMut(*mut f32);

// SAFETY: the parts sharing it write disjoint elements (each kernel that makes one says which).
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub(crate) fn new(buffer: &mut [f32]) -> SharedMut {
        SharedMut(buffer.as_mut_ptr())
    }

    /// The element `offset` from the start.
    ///
    /// # Safety
    /// `offset` lies inside the buffer (or one past its end).
    pub(crate) unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// An instruction-set level a kernel variant is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best level this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// Levels this CPU can run, lowest first.
    pub fn available() -> Vec<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= Isa::detect()).collect()
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.to_ascii_lowercase().as_str() {
            "scalar" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// Environment variable forcing an instruction-set level: `scalar`, `avx2` or `avx512`.
pub const ISA_ENV: &str = "ENGINE_ISA";

/// The level in use: `ENGINE_ISA` if set (an error if this CPU lacks it), else the detected one.
/// Read once and cached.
pub fn active_isa() -> Result<Isa, String> {
    static ACTIVE: OnceLock<Result<Isa, String>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| match std::env::var(ISA_ENV) {
            Err(_) => Ok(Isa::detect()),
            Ok(v) => match Isa::parse(&v) {
                None => Err(format!("{ISA_ENV}={v} is not one of scalar, avx2, avx512")),
                Some(isa) if isa > Isa::detect() => Err(format!("{ISA_ENV}={v}, but this CPU supports at most {}", Isa::detect().name())),
                Some(isa) => Ok(isa),
            },
        })
        .clone()
}
