//! Loss and gradients of a model's parameters through candle's autograd, shared by every denoiser's
//! [`super::Denoiser::loss_and_grads`] (plain, or with activation checkpointing in [`super::checkpointing`]).

use candle_core::{Tensor, Var};

use super::denoiser::LossFn;
use crate::error::Result;

/// A loss function as candle code calls it, inside a forward/backward written with candle's error type.
pub(crate) type CandleLossFn<'a> = dyn FnMut(&Tensor) -> candle_core::Result<Tensor> + 'a;

/// The loss and the gradient of each of `params` (in order, zeros where the loss does not reach), computed by
/// `body` from the loss function. The loss function's own error (e.g. a bad label) comes out as it was instead of
/// the candle error autograd wraps it in; the loss must be a scalar.
pub(crate) fn loss_and_grads_by(
    params: &[Tensor],
    loss_fn: &mut LossFn<'_>,
    body: impl FnOnce(&mut CandleLossFn<'_>) -> candle_core::Result<(Tensor, Vec<Option<Tensor>>)>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let (loss, grads) = with_loss_fn(loss_fn, body)?;
    Ok((loss, complete_grads(grads, params)?))
}

/// The tensors of named variables (a model's parameters, to take gradients of).
pub(crate) fn param_tensors(vars: &[(String, Var)]) -> Vec<Tensor> {
    vars.iter().map(|(_, v)| v.as_tensor().clone()).collect()
}

/// [`loss_and_grads_by`] with one plain backward pass through `forward`'s output.
pub(crate) fn backprop(
    params: &[Tensor],
    loss_fn: &mut LossFn<'_>,
    forward: impl FnOnce() -> candle_core::Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    loss_and_grads_by(params, loss_fn, |loss_fn| {
        let loss = loss_fn(&forward()?)?;
        let store = loss.backward()?;
        Ok((loss.detach(), params.iter().map(|p| store.get(p).cloned()).collect()))
    })
}

fn with_loss_fn<T>(
    loss_fn: &mut LossFn<'_>,
    body: impl FnOnce(&mut CandleLossFn<'_>) -> candle_core::Result<T>,
) -> Result<T> {
    let mut failure = None;
    let result = body(&mut |out: &Tensor| {
        let loss = loss_fn(out).map_err(|e| {
            let msg = e.to_string();
            failure = Some(e);
            candle_core::Error::Msg(msg)
        })?;
        loss.dims0()
            .map_err(|_| candle_core::Error::Msg("loss_fn: expected a scalar loss".into()))?;
        Ok(loss)
    });
    match (result, failure) {
        (Ok(r), _) => Ok(r),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}

/// Gradients in the order of `params`, zeros for those the loss did not reach.
pub(super) fn complete_grads(grads: Vec<Option<Tensor>>, params: &[Tensor]) -> Result<Vec<Tensor>> {
    Ok(grads
        .into_iter()
        .zip(params)
        .map(|(g, p)| match g {
            Some(g) => Ok(g),
            None => p.zeros_like(),
        })
        .collect::<candle_core::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    /// Large gradient contributions are summed on rayon in the vendored backprop (`add_on_threads`): the sums are
    /// the plain ones, also where both contributions are one tensor (`x + x` shares one storage lock), and a
    /// small tensor takes candle's own add.
    #[test]
    fn large_gradient_sums_are_the_plain_sums() {
        for n in [100usize, 1 << 16] {
            let v: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.01 - 0.3).collect();
            let x = Var::from_tensor(&Tensor::from_vec(v.clone(), n, &Device::Cpu).unwrap()).unwrap();
            let w = Tensor::from_vec((0..n).map(|i| (i % 13) as f32).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
            // d/dx of Σ (x + x)·w + Σ x·x = 2w + 2x: three contributions to x's gradient, one pair sharing a lock.
            let y = ((x.as_tensor() + x.as_tensor())
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                + x.as_tensor().sqr().unwrap().sum_all().unwrap())
            .unwrap();
            let g = y.backward().unwrap();
            let got = g
                .get(x.as_tensor())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (i, (&gi, &xi)) in got.iter().zip(&v).enumerate() {
                let want = 2.0 * (i % 13) as f32 + 2.0 * xi;
                assert!((gi - want).abs() <= 1e-5 * want.abs().max(1.0), "[{i}] {gi} vs {want}");
            }
        }
    }
}
