//! Training operators that burn's `flex` backend runs slowly, on our kernels as burn backend
//! extensions with their own backward passes: convolution with one group (`conv`), BatchNorm
//! on the batch's statistics (`batchnorm`) and max pooling (`max_pool`). Each has its kernels beside it and is tested against
//! burn's own composition of the same function.

pub mod batchnorm;
pub mod batchnorm_kernels;
pub mod conv;
pub mod conv_kernels;
pub mod max_pool;
pub mod max_pool_kernels;

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

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
