//! The optimiser's state in host memory: AdamW moments, the EMA and f32 master weights as flat buffers per
//! parameter, updated by the CPU kernels of [`super::optim`] in place (a full-precision CPU parameter is stepped
//! inside its own storage by a custom op). The twin of [`super::device_state`], which keeps the same state as
//! tensors on the parameters' device; [`crate::nn::kernels`] decides which a trainer uses.

use candle_core::{DType, Tensor, Var};

use super::optim::{
    adamw_cannot_overflow, adamw_ema_step, adamw_stays_finite, max_abs, max_nonnegative, sum_of_squares, Magnitudes,
    Pending, Skip, Update,
};
use super::options::TrainerOptions;
use crate::error::Result;
use crate::float::Float;

/// Optimiser buffers for the trainable parameters, in precision `T`.
#[derive(Clone, Debug)]
pub(crate) struct Buffers<T> {
    /// f32 master weights of a half-precision model (None when the model's own weights are full precision).
    pub master: Option<Vec<Vec<T>>>,
    pub m: Vec<Vec<T>>,
    pub v: Vec<Vec<T>>,
    pub ema: Vec<Vec<T>>,
}

pub(crate) fn new_buffers<T: Float>(vars: &[Var], model_dtype: DType) -> Result<Buffers<T>> {
    let values = vars
        .iter()
        .map(|v| v.as_tensor().to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let zeros: Vec<Vec<T>> = values.iter().map(|v| vec![T::of(0.0); v.len()]).collect();
    Ok(Buffers {
        master: (model_dtype != T::DTYPE).then(|| values.clone()),
        m: zeros.clone(),
        v: zeros,
        ema: values,
    })
}

impl<T: Float> Buffers<T> {
    /// Checks the summed gradients (scaled by the loss scale), and when loss and gradients are finite clips them,
    /// steps AdamW and the EMA, and writes the new weights into `vars`. Returns the (unscaled) global norm and
    /// whether the step was applied. Gradients are read in place; full-precision weights are updated in place.
    pub(crate) fn apply(
        &mut self,
        vars: &[Var],
        opts: &TrainerOptions,
        grads: &[Tensor],
        pending: Pending,
    ) -> Result<(f64, Skip)> {
        let grads: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_dtype(T::DTYPE))
            .collect::<candle_core::Result<_>>()?;
        let mut sum_sq = 0.0;
        for g in &grads {
            sum_sq += with_slice::<T, _>(g, sum_of_squares)?;
        }
        let (norm, update) = pending.update(sum_sq);
        let Some(update) = update else {
            return Ok((norm, Skip::NonFinite));
        };
        // Finite gradients can still overflow a parameter (a huge learning rate or weight decay): the step is
        // tried on copies first and refused as a whole, so that no parameter is ever left non-finite.
        for (i, (var, g)) in vars.iter().zip(&grads).enumerate() {
            let (m, v) = (&self.m[i], &self.v[i]);
            let finite = with_slice::<T, _>(g, |g| -> Result<bool> {
                let check = |p: &[T]| {
                    let mag = Magnitudes {
                        param: max_abs(p),
                        grad: max_abs(g),
                        m: max_abs(m),
                        v: max_nonnegative(v),
                    };
                    adamw_cannot_overflow::<T>(mag, update, &opts.optimizer)
                        || adamw_stays_finite(p, g, m, v, update, &opts.optimizer)
                };
                Ok(match self.master.as_ref() {
                    Some(ms) => check(&ms[i]),
                    None => with_slice::<T, _>(var.as_tensor(), check)?,
                })
            })??;
            if !finite {
                return Ok((norm, Skip::Overflow));
            }
        }
        for (i, (var, g)) in vars.iter().zip(&grads).enumerate() {
            let (m, v, ema) = (&mut self.m[i], &mut self.v[i], &mut self.ema[i]);
            let master = self.master.as_mut().map(|ms| &mut ms[i]);
            with_slice::<T, _>(g, |g| -> Result<()> {
                let mut copy;
                let param = match master {
                    Some(param) => Some(param),
                    None if var.device().is_cpu() => None,
                    // Not on the CPU: update a host copy and write it back.
                    None => {
                        copy = var.as_tensor().flatten_all()?.to_vec1::<T>()?;
                        Some(&mut copy)
                    }
                };
                match param {
                    Some(param) => {
                        adamw_ema_step(param, g, m, v, ema, update, &opts.optimizer, opts.ema_decay);
                        let t = Tensor::from_slice(param, var.shape(), var.device())?.to_dtype(var.dtype())?;
                        var.set(&t)?;
                    }
                    None => var.as_tensor().inplace_op1(&InPlaceAdamW {
                        grad: g,
                        moments: std::cell::RefCell::new((m, v, ema)),
                        update,
                        opts,
                    })?,
                }
                Ok(())
            })??;
        }
        Ok((norm, Skip::No))
    }
}

/// Runs `f` on the values of `t` without copying when it is a contiguous CPU tensor of dtype `T`, else on a copy.
fn with_slice<T: Float, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    if t.dtype() == T::DTYPE && t.device().is_cpu() {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            return Ok(f(&cpu.as_slice::<T>()?[start..end]));
        }
    }
    let copy = t.to_dtype(T::DTYPE)?.flatten_all()?.to_vec1::<T>()?;
    Ok(f(&copy))
}

/// AdamW and the EMA applied to a full-precision CPU parameter in its own storage.
struct InPlaceAdamW<'a, T> {
    grad: &'a [T],
    moments: std::cell::RefCell<(&'a mut Vec<T>, &'a mut Vec<T>, &'a mut Vec<T>)>,
    update: Update,
    opts: &'a TrainerOptions,
}

impl<T: Float> candle_core::InplaceOp1 for InPlaceAdamW<'_, T> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, storage: &mut candle_core::CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("adamw: the parameter is not contiguous")
        };
        let Some(values) = T::storage_mut(storage) else {
            candle_core::bail!("adamw: the parameter's dtype is not the optimiser's")
        };
        let param = &mut values[start..end];
        let mut moments = self.moments.borrow_mut();
        let (m, v, ema) = &mut *moments;
        adamw_ema_step(
            param,
            self.grad,
            m,
            v,
            ema,
            self.update,
            &self.opts.optimizer,
            self.opts.ema_decay,
        );
        Ok(())
    }
}
