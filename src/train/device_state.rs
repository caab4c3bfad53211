//! The optimiser on the parameters' device: AdamW, the EMA, global-norm clipping and loss unscaling in candle
//! tensor ops over flat buffers that stay on the device (a GPU, or the CPU when the generic path is forced; see
//! [`crate::nn::kernels`]).
//!
//! The moments, the EMA and the f32 master weights of half-precision models are each one flat tensor on the
//! device. A step reads back two scalars (the global gradient norm, which clipping and the statistics need, and
//! one finiteness flag of the update); parameters and gradients never leave the device. The update is computed
//! whole before anything is written, so a step that would make a value non-finite is refused with nothing
//! changed, as on the host path.
//!
//! The arithmetic is the host kernel's ([`super::optim`], torch's AdamW) operation by operation: every product
//! with a constant is an `affine` (`x · c + 0`, exact), the bias correction an exact division, so that on the CPU
//! the two paths agree to the last bit.

use std::cell::Cell;

use candle_core::{DType, Device, Tensor, Var};

use super::host_state::Buffers;
use super::optim::{AdamWConfig, Update};
use super::optim::{Pending, Skip};
use super::TrainerOptions;
use crate::error::Result;
use crate::float::Float;

thread_local! {
    /// Values this thread's device optimiser has read back to the host (for the tests: a step reads scalars only).
    static HOST_VALUES_READ: Cell<usize> = const { Cell::new(0) };
}

/// How many values the device optimiser has read back to the host on this thread so far.
pub fn host_values_read() -> usize {
    HOST_VALUES_READ.with(|c| c.get())
}

/// One scalar of a device tensor, read back (and counted).
fn read_scalar(t: &Tensor) -> Result<f64> {
    HOST_VALUES_READ.with(|c| c.set(c.get() + t.elem_count()));
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// The optimiser's buffers as flat tensors on the parameters' device.
#[derive(Clone, Debug)]
pub(crate) struct DeviceBuffers {
    /// f32, or f64 for f64 models.
    pub dtype: DType,
    /// Where each parameter's values start in the flat buffers.
    pub offsets: Vec<usize>,
    pub lens: Vec<usize>,
    pub master: Option<Tensor>,
    pub m: Tensor,
    pub v: Tensor,
    pub ema: Tensor,
}

/// The parameters, flattened and concatenated in `dtype`.
fn flat(tensors: &[&Tensor], dtype: DType, device: &Device) -> Result<Tensor> {
    if tensors.is_empty() {
        return Ok(Tensor::zeros(0, dtype, device)?);
    }
    let parts = tensors
        .iter()
        .map(|t| t.to_dtype(dtype)?.flatten_all())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

impl DeviceBuffers {
    pub fn new(vars: &[Var], model_dtype: DType, dtype: DType) -> Result<Self> {
        let device = vars.first().map_or(Device::Cpu, |v| v.device().clone());
        let lens: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        let offsets = lens
            .iter()
            .scan(0, |at, n| {
                let start = *at;
                *at += n;
                Some(start)
            })
            .collect();
        let values = flat(&vars.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(), dtype, &device)?;
        let zeros = values.zeros_like()?;
        Ok(Self {
            dtype,
            offsets,
            lens,
            master: (model_dtype != dtype).then(|| values.copy()).transpose()?,
            m: zeros.clone(),
            v: zeros.copy()?,
            ema: values,
        })
    }

    /// One parameter's part of a flat buffer, in its shape.
    pub fn part(&self, buffer: &Tensor, i: usize, shape: &[usize]) -> Result<Tensor> {
        Ok(buffer.narrow(0, self.offsets[i], self.lens[i])?.reshape(shape)?)
    }

    /// The buffers copied to the host (for checkpoints).
    pub fn to_host<T: Float>(&self) -> Result<Buffers<T>> {
        let split = |t: &Tensor| -> Result<Vec<Vec<T>>> {
            let all = t.to_dtype(T::DTYPE)?.to_vec1::<T>()?;
            Ok(self
                .offsets
                .iter()
                .zip(&self.lens)
                .map(|(&o, &n)| all[o..o + n].to_vec())
                .collect())
        };
        Ok(Buffers {
            master: self.master.as_ref().map(split).transpose()?,
            m: split(&self.m)?,
            v: split(&self.v)?,
            ema: split(&self.ema)?,
        })
    }

    /// Replaces the buffers with host values (a resumed checkpoint's), uploaded to the device.
    pub fn load_host<T: Float>(&mut self, host: &Buffers<T>) -> Result<()> {
        let device = self.m.device().clone();
        let up = |parts: &[Vec<T>]| -> Result<Tensor> {
            let all: Vec<T> = parts.iter().flatten().copied().collect();
            Ok(Tensor::from_vec(all, parts.iter().map(Vec::len).sum::<usize>(), &device)?.to_dtype(self.dtype)?)
        };
        self.m = up(&host.m)?;
        self.v = up(&host.v)?;
        self.ema = up(&host.ema)?;
        if let Some(master) = &host.master {
            self.master = Some(up(master)?);
        }
        Ok(())
    }

    /// The device version of [`Buffers::apply`](super::Buffers): checks, clips, steps AdamW and the EMA and writes
    /// the new weights into `vars`, all on the device; returns the unscaled global norm and the verdict.
    pub(super) fn apply(
        &mut self,
        vars: &[Var],
        opts: &TrainerOptions,
        grads: &[Tensor],
        pending: Pending,
    ) -> Result<(f64, Skip)> {
        let device = self.m.device().clone();
        let g = flat(&grads.iter().collect::<Vec<_>>(), self.dtype, &device)?;
        // Σ g² in f64, as the host path.
        let sum_sq = read_scalar(&g.to_dtype(DType::F64)?.sqr()?.sum_all()?)?;
        let (norm, update) = pending.update(sum_sq);
        let Some(update) = update else {
            return Ok((norm, Skip::NonFinite));
        };
        let param = match &self.master {
            Some(master) => master.clone(),
            None => flat(
                &vars.iter().map(|v| v.as_tensor()).collect::<Vec<_>>(),
                self.dtype,
                &device,
            )?,
        };
        let (p, m, v) = adamw_tensors(&param, &g, &self.m, &self.v, update, &opts.optimizer)?;
        // x · 0 is 0 for every finite x and NaN otherwise: one flag for the three buffers.
        let nan_if_not_finite =
            (p.affine(0.0, 0.0)?.sum_all()? + m.affine(0.0, 0.0)?.sum_all()?)?.add(&v.affine(0.0, 0.0)?.sum_all()?)?;
        if !read_scalar(&nan_if_not_finite)?.is_finite() {
            return Ok((norm, Skip::Overflow));
        }
        let (d, w) = (opts.ema_decay, 1.0 - opts.ema_decay);
        self.ema = (self.ema.affine(d, 0.0)? + p.affine(w, 0.0)?)?;
        self.m = m;
        self.v = v;
        for (i, var) in vars.iter().enumerate() {
            var.set(&self.part(&p, i, var.dims())?.to_dtype(var.dtype())?)?;
        }
        if self.master.is_some() {
            self.master = Some(p);
        }
        Ok((norm, Skip::No))
    }
}

/// AdamW's new (parameter, first moment, second moment) in tensor ops, element by element the host kernel's
/// `AdamWCoefficients::element`.
fn adamw_tensors(
    p: &Tensor,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    update: Update,
    cfg: &AdamWConfig,
) -> Result<(Tensor, Tensor, Tensor)> {
    let Update { step, lr, grad_scale } = update;
    let bias1 = 1.0 - cfg.beta1.powi(step as i32);
    let bias2_sqrt = (1.0 - cfg.beta2.powi(step as i32)).sqrt();
    let gi = if grad_scale != 1.0 {
        g.affine(grad_scale, 0.0)?
    } else {
        g.clone()
    };
    let p = p.affine(1.0 - lr * cfg.weight_decay, 0.0)?;
    // m + w1 (g − m), torch's lerp.
    let m = (m + (&gi - m)?.affine(1.0 - cfg.beta1, 0.0)?)?;
    let v = (v.affine(cfg.beta2, 0.0)? + (gi.affine(1.0 - cfg.beta2, 0.0)? * &gi)?)?;
    let bc2 = Tensor::new(bias2_sqrt, p.device())?.to_dtype(p.dtype())?;
    let denom = v.sqrt()?.broadcast_div(&bc2)?.affine(1.0, cfg.eps)?;
    let p = (p + (&m / &denom)?.affine(-(lr / bias1), 0.0)?)?;
    Ok((p, m, v))
}
