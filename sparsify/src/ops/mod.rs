//! Training operators that burn's `flex` backend runs slowly, on our kernels as burn backend
//! extensions with their own backward passes: linear layers (`linear`), convolution with one
//! group (`conv`), BatchNorm on the batch's statistics (`batchnorm`), max pooling (`max_pool`),
//! ReLU (`relu`) and fake quantization of activations (`fake_quant`). Each has its kernels beside
//! it (GEMMs through `gemm`) and is tested against burn's own composition of the same function.

pub mod batchnorm;
pub mod batchnorm_kernels;
pub mod conv;
pub mod conv_kernels;
pub mod fake_quant;
pub mod gemm;
pub mod linear;
pub mod linear_kernels;
pub mod max_pool;
pub mod max_pool_kernels;
pub mod relu;

use std::mem::MaybeUninit;
use std::sync::{Mutex, OnceLock};

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;
use engine::team::Team;

/// A flex tensor laid out contiguously from its start (itself where it already is), and its shape.
fn contiguous(t: FlexTensor) -> (FlexTensor, Vec<usize>) {
    let t = if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() };
    let shape = t.layout().shape().to_vec();
    (t, shape)
}

/// The values of a tensor `contiguous` returned.
fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice().expect("an f32 tensor made contiguous")
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// The threads the training operators' kernels split their work over: the engine's team (the
/// caller and helpers that spin a while between jobs), sized like rayon's pool when first used.
/// Training hands out a few jobs of tens to hundreds of microseconds per layer and step; rayon's
/// workers fall asleep between them and woke too late to share the work.
pub fn team() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(rayon::current_num_threads()).unwrap_or_else(|_| Team::new(1).expect("a team of one thread spawns none")))
}

/// Fewest values a task of an element-wise pass gets: below this, a pass is not worth another
/// thread.
pub const MIN_RUN: usize = 1 << 14;

/// Values per task of an element-wise pass over `len` values: split evenly over the team, at
/// least `MIN_RUN`.
pub fn run_length(len: usize) -> usize {
    len.div_ceil(threads()).max(MIN_RUN)
}

/// How many threads `team` has.
pub fn threads() -> usize {
    team().threads()
}

/// Calls `f` on every item, over the team's threads.
pub fn for_each<T: Send>(items: impl Iterator<Item = T>, f: impl Fn(T) + Sync) {
    team().for_each(items.collect(), f)
}

/// `f` of every item, over the team's threads, in the items' order.
pub fn map<T: Send, R: Send>(items: impl Iterator<Item = T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let items: Vec<(usize, T)> = items.enumerate().collect();
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    team().for_each(items, |(i, item)| *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(f(item)));
    results.into_iter().map(|r| r.into_inner().unwrap_or_else(|e| e.into_inner()).expect("every item was mapped")).collect()
}

/// `len` zeros, written over the team's threads: an output of megabytes zeroed on the calling
/// thread (as `vec![0.0; len]` does where the allocator reuses memory) left the helpers waiting.
pub fn zeros(len: usize) -> Vec<f32> {
    let mut values: Vec<f32> = Vec::with_capacity(len);
    let run = len.div_ceil(threads()).max(1 << 16);
    for_each(values.spare_capacity_mut()[..len].chunks_mut(run), |run| run.fill(MaybeUninit::new(0.0)));
    // SAFETY: the capacity is at least `len`, and every element below `len` was written above.
    unsafe { values.set_len(len) };
    values
}
