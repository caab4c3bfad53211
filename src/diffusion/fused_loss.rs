//! The MSE-type training loss of [`GaussianDiffusion::training_losses`] (the MSE on the prediction plus, with a
//! learned variance, the VB term with the predicted mean frozen: IDDPM's hybrid loss, Latte's default) as one CPU
//! pass over the model output and one for its gradient, instead of some forty element-wise tensor ops and their
//! backward. It reads the model output, x₀ and the noise once per sample (x_t is recomputed inline), on rayon's
//! threads, and gives the same values as the composition in `gaussian.rs` (its tests compare both, values and
//! gradients, and check the gradient against finite differences).
//!
//! Taken where it applies (CPU, f32 or f64, MSE loss types, no sample at t = 0 under a learned variance: the
//! decoder likelihood there stays with the composition); everything else runs the composition.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gaussian::{GaussianDiffusion, LossType, Losses, MeanType, VarType};
use crate::error::{value_error, Result};
use crate::float::{run_kernel3, Float, Kernel3};
use crate::limits::try_uninit;

/// The per-sample constants of the loss at that sample's step, from the process's f64 tables.
#[derive(Clone, Copy, Debug)]
struct StepCoefficients {
    /// √ᾱ and √(1−ᾱ): x_t = √ᾱ x₀ + √(1−ᾱ) ε (also the velocity target's and x₀-from-v's factors).
    sqrt_alpha: f64,
    sqrt_one_minus_alpha: f64,
    /// √(1/ᾱ) and √(1/ᾱ − 1): x₀ from a noise prediction.
    sqrt_recip_alpha: f64,
    sqrt_recipm1_alpha: f64,
    /// The posterior mean's coefficients of x₀ and x_t.
    mean_coef1: f64,
    mean_coef2: f64,
    /// The posterior's clipped log-variance (the true one, and the learned range's lower end).
    posterior_log_var: f64,
    /// log β_t: the learned range's upper end.
    log_beta: f64,
}

/// What the kernel computes: the target, the variance parametrisation and the VB term's weight.
#[derive(Clone, Debug)]
struct HybridLoss {
    mean_type: MeanType,
    /// None: a fixed variance (MSE only). Some(true): learned range (interpolated log-variance), Some(false):
    /// learned log-variance.
    learned_range: Option<bool>,
    vb_scale: f64,
    steps: Vec<StepCoefficients>,
    /// (B, F, C, S): samples, frames, channels of x₀, the product of the remaining dimensions.
    dims: (usize, usize, usize, usize),
}

/// The backward: the same constants and each sample's output gradient of (mse, vb).
struct HybridLossBackward {
    loss: HybridLoss,
    grad: Vec<(f64, f64)>,
}

impl GaussianDiffusion {
    /// [`Self::training_losses`] through the fused kernel where it applies (see the module), None elsewhere.
    pub(super) fn fused_training_losses(
        &self,
        model_output: &Tensor,
        x_start: &Tensor,
        t: &[usize],
        noise: &Tensor,
    ) -> Result<Option<Losses>> {
        let learned_range = match self.var_type {
            VarType::LearnedRange => Some(true),
            VarType::Learned => Some(false),
            VarType::FixedSmall | VarType::FixedLarge => None,
        };
        let vb_scale = match self.loss_type {
            LossType::Mse => 1.0,
            LossType::RescaledMse => self.num_timesteps() as f64 / 1000.0,
            LossType::Kl | LossType::RescaledKl => return Ok(None),
        };
        // x₀ and the noise get no gradient from the kernel: where either is on a graph, the composition runs.
        let applies = matches!(model_output.device(), Device::Cpu)
            && [x_start, noise]
                .iter()
                .all(|x| x.dtype() == model_output.dtype() && x.device().is_cpu() && !x.track_op())
            && matches!(model_output.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
            && !(learned_range.is_some() && t.contains(&0));
        if !applies {
            return Ok(None);
        }
        // Shapes and steps as the composition checks them (same errors).
        self.split_output(model_output, x_start)?;
        let xd = x_start.dims();
        let dims = (xd[0], xd[1], xd[2], xd[3..].iter().product::<usize>());
        if dims.1 * dims.2 * dims.3 == 0 {
            return Ok(None); // empty samples: the composition's means over nothing
        }
        // Tables are read with `get`: a loaded process's tables could be shorter than its betas (an error, as in
        // `extract`, never a panic).
        let at = |table: &[f64], i: usize| {
            table
                .get(i)
                .copied()
                .ok_or_else(|| value_error("t", format!("steps in [0, {})", table.len()), i))
        };
        let steps = t
            .iter()
            .map(|&i| {
                Ok(StepCoefficients {
                    sqrt_alpha: at(&self.sqrt_alphas_cumprod, i)?,
                    sqrt_one_minus_alpha: at(&self.sqrt_one_minus_alphas_cumprod, i)?,
                    sqrt_recip_alpha: at(&self.sqrt_recip_alphas_cumprod, i)?,
                    sqrt_recipm1_alpha: at(&self.sqrt_recipm1_alphas_cumprod, i)?,
                    mean_coef1: at(&self.posterior_mean_coef1, i)?,
                    mean_coef2: at(&self.posterior_mean_coef2, i)?,
                    posterior_log_var: at(&self.posterior_log_variance_clipped, i)?,
                    log_beta: at(&self.betas, i)?.ln(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let op = HybridLoss {
            mean_type: self.mean_type,
            learned_range,
            vb_scale,
            steps,
            dims,
        };
        let terms = model_output
            .contiguous()?
            .apply_op3(&x_start.contiguous()?, &noise.contiguous()?, op)?;
        let mse = terms.narrow(1, 0, 1)?.squeeze(1)?;
        if learned_range.is_none() {
            return Ok(Some(Losses {
                loss: mse.clone(),
                mse: Some(mse),
                vb: None,
            }));
        }
        let vb = terms.narrow(1, 1, 1)?.squeeze(1)?;
        Ok(Some(Losses {
            loss: terms.sum(1)?,
            mse: Some(mse),
            vb: Some(vb),
        }))
    }
}

/// One element's terms.
struct Element<T> {
    /// Target − prediction.
    diff: T,
    /// (KL, dKL/dv) with a learned variance.
    kl: Option<(T, T)>,
}

impl HybridLoss {
    fn elements_per_sample(&self) -> usize {
        let (_, f, c, s) = self.dims;
        f * c * s
    }

    fn elements_per_output_sample(&self) -> usize {
        let (_, f, _, s) = self.dims;
        f * self.out_channels() * s
    }

    /// The output channels per frame: 2C with a learned variance.
    fn out_channels(&self) -> usize {
        if self.learned_range.is_some() {
            2 * self.dims.2
        } else {
            self.dims.2
        }
    }

    /// Element (frame, channel, spatial) of sample `b`, in the composition's order of operations.
    #[inline(always)]
    fn element<T: Float>(&self, k: &[T; 8], x0: T, noise: T, pred: T, var: T) -> Element<T> {
        let [sa, s1ma, sra, srm1, c1, c2, lv_q, log_beta] = *k;
        let x_t = x0 * sa + noise * s1ma;
        let target = match self.mean_type {
            MeanType::Epsilon => noise,
            MeanType::StartX => x0,
            MeanType::Velocity => noise * sa - x0 * s1ma,
        };
        let diff = target - pred;
        let kl = self.learned_range.map(|range| {
            let (lv_p, dlv_dv) = if range {
                let two = T::ONE + T::ONE;
                let frac = (var + T::ONE) / two;
                (frac * log_beta + (T::ONE - frac) * lv_q, (log_beta - lv_q) / two)
            } else {
                (var, T::ONE)
            };
            let pred_x0 = match self.mean_type {
                MeanType::Epsilon => x_t * sra - pred * srm1,
                MeanType::StartX => pred,
                MeanType::Velocity => x_t * sa - pred * s1ma,
            };
            let mean_p = pred_x0 * c1 + x_t * c2;
            let mean_q = x0 * c1 + x_t * c2;
            let ratio = (lv_q - lv_p).exp();
            let d = mean_q - mean_p;
            let sq = d * d * (-lv_p).exp();
            let half = T::of(0.5);
            let kl = ((lv_p - lv_q + ratio) + sq - T::ONE) * half;
            (kl, (T::ONE - ratio - sq) * half * dlv_dv)
        });
        Element { diff, kl }
    }

    fn coefficients<T: Float>(&self, b: usize) -> [T; 8] {
        let s = &self.steps[b];
        [
            s.sqrt_alpha,
            s.sqrt_one_minus_alpha,
            s.sqrt_recip_alpha,
            s.sqrt_recipm1_alpha,
            s.mean_coef1,
            s.mean_coef2,
            s.posterior_log_var,
            s.log_beta,
        ]
        .map(T::of)
    }

    /// Calls `f(index in the sample's output, x₀, noise, prediction, variance value)` for every element of sample
    /// `b`'s x₀ (the output holds the prediction in channels 0..C, the variance values in C..2C).
    #[inline(always)]
    fn for_each<T: Float>(&self, out: &[T], x0: &[T], noise: &[T], mut f: impl FnMut(usize, usize, T, T, T, T)) {
        let (_, frames, c, s) = self.dims;
        let k = self.out_channels();
        for fr in 0..frames {
            for ch in 0..c {
                let xs = (fr * c + ch) * s;
                let ps = (fr * k + ch) * s;
                let vs = if k > c { ps + c * s } else { ps };
                for i in 0..s {
                    f(ps + i, vs + i, x0[xs + i], noise[xs + i], out[ps + i], out[vs + i]);
                }
            }
        }
    }

    /// (mse, vb) of every sample, (B, 2) values (the vb column 0 with a fixed variance).
    fn forward<T: Float>(&self, out: &[T], x0: &[T], noise: &[T]) -> Vec<T> {
        let n = self.elements_per_sample();
        let per_out = self.elements_per_output_sample();
        let ln2 = std::f64::consts::LN_2;
        (0..self.dims.0)
            .into_par_iter()
            .flat_map_iter(|b| {
                let k = self.coefficients::<T>(b);
                let (mut mse, mut kl) = (0f64, 0f64);
                self.for_each(
                    &out[b * per_out..(b + 1) * per_out],
                    &x0[b * n..(b + 1) * n],
                    &noise[b * n..(b + 1) * n],
                    |_, _, x0, noise, pred, var| {
                        let e = self.element(&k, x0, noise, pred, var);
                        mse += (e.diff * e.diff).to_f64();
                        if let Some((v, _)) = e.kl {
                            kl += v.to_f64();
                        }
                    },
                );
                let vb = kl / n as f64 / ln2 * self.vb_scale;
                [T::of(mse / n as f64), T::of(vb)]
            })
            .collect()
    }

    /// The gradient in the model output of Σ_b g_mse[b]·mse[b] + g_vb[b]·vb[b]: −2(target − prediction)/N on the
    /// prediction channels; on the variance channels dKL/dv scaled as the VB term (the mean is frozen, so the
    /// VB term gives the prediction nothing).
    fn backward<T: Float>(&self, out: &[T], x0: &[T], noise: &[T], grad: &[(f64, f64)]) -> candle_core::Result<Vec<T>> {
        let n = self.elements_per_sample();
        let per_out = self.elements_per_output_sample();
        // SAFETY: each sample's chunk is written in full below (every prediction and, with a learned variance,
        // every variance element: the two channel halves cover the chunk).
        let mut dout = unsafe { try_uninit::<T>(out.len(), "the loss's output gradient")? };
        let ln2 = std::f64::consts::LN_2;
        dout.par_chunks_mut(per_out).enumerate().for_each(|(b, dst)| {
            let k = self.coefficients::<T>(b);
            let (g_mse, g_vb) = grad[b];
            let mse_factor = T::of(-2.0 * g_mse / n as f64);
            let vb_factor = T::of(g_vb * self.vb_scale / (n as f64 * ln2));
            self.for_each(
                &out[b * per_out..(b + 1) * per_out],
                &x0[b * n..(b + 1) * n],
                &noise[b * n..(b + 1) * n],
                |pi, vi, x0, noise, pred, var| {
                    let e = self.element(&k, x0, noise, pred, var);
                    dst[pi] = e.diff * mse_factor;
                    if let Some((_, dkl)) = e.kl {
                        dst[vi] = dkl * vb_factor;
                    }
                },
            );
        });
        Ok(dout)
    }

    fn check(&self, l1: &Layout, l2: &Layout, l3: &Layout) -> candle_core::Result<()> {
        let (b, f, c, s) = self.dims;
        let (x_len, out_len) = (b * f * c * s, b * f * self.out_channels() * s);
        if l1.shape().elem_count() != out_len || [l2, l3].iter().any(|l| l.shape().elem_count() != x_len) {
            candle_core::bail!(
                "hybrid loss: output {:?}, x_start {:?}, noise {:?} do not fit {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape(),
                self.dims
            );
        }
        Ok(())
    }
}

/// The forward on (output, x₀, noise): (mse, vb) per sample.
impl Kernel3 for HybridLoss {
    fn run<T: Float + 'static>(&self, out: &[T], x0: &[T], noise: &[T]) -> candle_core::Result<Vec<T>> {
        Ok(self.forward(out, x0, noise))
    }
}

/// The backward on (output, x₀, noise): the output's gradient.
impl Kernel3 for HybridLossBackward {
    fn run<T: Float + 'static>(&self, out: &[T], x0: &[T], noise: &[T]) -> candle_core::Result<Vec<T>> {
        self.loss.backward(out, x0, noise, &self.grad)
    }
}

impl CustomOp3 for HybridLoss {
    fn name(&self) -> &'static str {
        "hybrid-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.check(l1, l2, l3)?;
        let out = run_kernel3(self, self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((out, Shape::from_dims(&[self.dims.0, 2])))
    }

    fn bwd(
        &self,
        out: &Tensor,
        x_start: &Tensor,
        noise: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad
            .to_dtype(candle_core::DType::F64)?
            .to_vec2::<f64>()?
            .into_iter()
            .map(|row| (row[0], row[1]))
            .collect();
        let op = HybridLossBackward {
            loss: self.clone(),
            grad,
        };
        Ok((Some(out.apply_op3_no_bwd(x_start, noise, &op)?), None, None))
    }
}

impl CustomOp3 for HybridLossBackward {
    fn name(&self) -> &'static str {
        "hybrid-loss-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.loss.check(l1, l2, l3)?;
        let out = run_kernel3(self, self.name(), (s1, l1), (s2, l2), (s3, l3))?;
        Ok((out, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diffusion::{named_beta_schedule, BetaSchedule};
    use crate::rng::Generator;
    use candle_core::{DType, Var};

    fn randn(rng: &mut Generator, dims: &[usize], scale: f64, dtype: DType) -> Tensor {
        let n = dims.iter().product();
        let t = (Tensor::from_vec(rng.normal(n, 0.0, 1.0), dims, &Device::Cpu).unwrap() * scale).unwrap();
        t.to_dtype(dtype).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    /// The loss terms and the gradient in the model output of Σ_b (w_b·loss_b + u_b·vb_b), so that the MSE and
    /// VB gradients are both weighted apart.
    fn run(
        d: &GaussianDiffusion,
        out: &Tensor,
        x0: &Tensor,
        t: &[usize],
        noise: &Tensor,
        fused: bool,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let var = Var::from_tensor(out).unwrap();
        let l = if fused {
            d.fused_training_losses(var.as_tensor(), x0, t, noise)
                .unwrap()
                .expect("the fused kernel applies")
        } else {
            d.composed_training_losses(var.as_tensor(), x0, t, noise).unwrap()
        };
        let b = t.len();
        let w = Tensor::from_vec((0..b).map(|i| 1.0 + i as f64).collect::<Vec<_>>(), b, &Device::Cpu).unwrap();
        let w = w.to_dtype(out.dtype()).unwrap();
        let mut total = l.loss.mul(&w).unwrap().sum_all().unwrap();
        if let Some(vb) = &l.vb {
            total = (total + vb.mul(&w.sqr().unwrap()).unwrap().sum_all().unwrap()).unwrap();
        }
        let grads = total.backward().unwrap();
        let vb = l.vb.as_ref().map(values).unwrap_or_default();
        (
            values(&l.loss),
            values(l.mse.as_ref().unwrap()),
            vb,
            values(grads.get(var.as_tensor()).unwrap()),
        )
    }

    fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what}[{i}]: fused {x} vs composed {y} (scale {scale})"
            );
        }
    }

    /// Every prediction target, variance type and MSE loss type: the fused kernel's loss, MSE and VB terms and
    /// its gradient equal the tensor composition's (which is checked against the reference code and finite
    /// differences), in f64 to rounding and in f32 to f32 rounding; respaced processes included.
    #[test]
    fn fused_loss_equals_the_composition() {
        for (steps, respace) in [(1000, None), (1000, Some("25"))] {
            let betas = named_beta_schedule(BetaSchedule::Linear, steps, 0.0, 0.0).unwrap();
            for mean_type in [MeanType::Epsilon, MeanType::StartX, MeanType::Velocity] {
                for var_type in [
                    VarType::LearnedRange,
                    VarType::Learned,
                    VarType::FixedSmall,
                    VarType::FixedLarge,
                ] {
                    for loss_type in [LossType::Mse, LossType::RescaledMse] {
                        let d = match respace {
                            None => GaussianDiffusion::new(betas.clone(), mean_type, var_type, loss_type).unwrap(),
                            Some(r) => {
                                let keep = crate::diffusion::space_timesteps(steps, r).unwrap();
                                GaussianDiffusion::spaced(betas.clone(), &keep, mean_type, var_type, loss_type).unwrap()
                            }
                        };
                        let n = d.num_timesteps();
                        let t = [1, n / 2, n - 1];
                        for dtype in [DType::F64, DType::F32] {
                            let mut rng = Generator::new(7);
                            let dims = [3, 2, 3, 2, 5];
                            let x0 = randn(&mut rng, &dims, 0.5, dtype).tanh().unwrap();
                            let noise = randn(&mut rng, &dims, 1.0, dtype);
                            let k = if var_type.is_learned() { 6 } else { 3 };
                            let out = randn(&mut rng, &[3, 2, k, 2, 5], 0.7, dtype);
                            let fused = run(&d, &out, &x0, &t, &noise, true);
                            let composed = run(&d, &out, &x0, &t, &noise, false);
                            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-6 };
                            let what = format!("{mean_type:?} {var_type:?} {loss_type:?} {dtype:?} {respace:?}");
                            close(&fused.0, &composed.0, tol, &format!("loss {what}"));
                            close(&fused.1, &composed.1, tol, &format!("mse {what}"));
                            close(&fused.2, &composed.2, tol, &format!("vb {what}"));
                            close(&fused.3, &composed.3, tol, &format!("grad {what}"));
                            assert!(fused.3.iter().any(|g| *g != 0.0));
                            assert_eq!(fused.2.is_empty(), !var_type.is_learned());
                        }
                    }
                }
            }
        }
    }

    /// The kernel's own gradient against central finite differences of its own loss (f64).
    #[test]
    fn fused_loss_gradient_matches_finite_differences() {
        let betas = named_beta_schedule(BetaSchedule::Linear, 1000, 0.0, 0.0).unwrap();
        let d = GaussianDiffusion::new(betas, MeanType::Epsilon, VarType::LearnedRange, LossType::Mse).unwrap();
        let mut rng = Generator::new(2);
        let x0 = randn(&mut rng, &[2, 2, 2, 3], 0.5, DType::F64).tanh().unwrap();
        let noise = randn(&mut rng, &[2, 2, 2, 3], 1.0, DType::F64);
        let out = randn(&mut rng, &[2, 2, 4, 3], 0.5, DType::F64);
        let t = [40, 900];
        let (_, _, _, g) = run(&d, &out, &x0, &t, &noise, true);
        let base = values(&out);
        let eps = 1e-6;
        for i in 0..base.len() {
            // Element i of (2, 2, 4, 3): channels 0 and 1 predict the noise, 2 and 3 the variance.
            let is_mean = (i / 3) % 4 < 2;
            let at = |delta: f64| {
                let mut v = base.clone();
                v[i] += delta;
                let o = Tensor::from_vec(v, out.dims(), &Device::Cpu).unwrap();
                let l = d.fused_training_losses(&o, &x0, &t, &noise).unwrap().unwrap();
                let w = Tensor::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
                // A mean channel's value moves the VB term too, but the VB term sees the mean detached (it trains
                // the variance only), so only the MSE's part of its derivative is the gradient.
                let total = if is_mean {
                    l.mse.unwrap().mul(&w).unwrap().sum_all().unwrap()
                } else {
                    (l.loss.mul(&w).unwrap().sum_all().unwrap()
                        + l.vb.unwrap().mul(&w.sqr().unwrap()).unwrap().sum_all().unwrap())
                    .unwrap()
                };
                total.to_scalar::<f64>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() <= 1e-6 + 1e-5 * numeric.abs(),
                "[{i}]: {} vs {numeric}",
                g[i]
            );
        }
    }

    /// Where the kernel does not apply, `training_losses` runs the composition: a t = 0 sample under a learned
    /// variance (the decoder likelihood), the KL loss types, a dtype the kernel lacks.
    #[test]
    fn the_composition_runs_where_the_kernel_does_not_apply() {
        let betas = named_beta_schedule(BetaSchedule::Linear, 100, 0.0, 0.0).unwrap();
        let mut rng = Generator::new(3);
        let x0 = randn(&mut rng, &[2, 1, 2, 2], 0.5, DType::F32);
        let noise = randn(&mut rng, &[2, 1, 2, 2], 1.0, DType::F32);
        let out = randn(&mut rng, &[2, 1, 4, 2], 0.5, DType::F32);
        let learned =
            GaussianDiffusion::new(betas.clone(), MeanType::Epsilon, VarType::LearnedRange, LossType::Mse).unwrap();
        let fused = |d: &GaussianDiffusion, o: &Tensor, x: &Tensor, n: &Tensor, t: &[usize]| {
            d.fused_training_losses(o, x, t, n).unwrap().is_some()
        };
        assert!(fused(&learned, &out, &x0, &noise, &[1, 5]));
        assert!(!fused(&learned, &out, &x0, &noise, &[0, 5]));
        let kl = GaussianDiffusion::new(betas.clone(), MeanType::Epsilon, VarType::LearnedRange, LossType::Kl).unwrap();
        assert!(!fused(&kl, &out, &x0, &noise, &[1, 5]));
        let half = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        assert!(!fused(&learned, &half(&out), &half(&x0), &half(&noise), &[1, 5]));
        // x₀ on a graph (the kernel gives it no gradient), empty samples: the composition.
        let tracked = Var::from_tensor(&x0).unwrap();
        assert!(!fused(&learned, &out, tracked.as_tensor(), &noise, &[1, 5]));
        let empty = Tensor::zeros((2, 0, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let empty_out = Tensor::zeros((2, 0, 4, 2), DType::F32, &Device::Cpu).unwrap();
        assert!(!fused(&learned, &empty_out, &empty, &empty, &[1, 5]));
        // A table shorter than the process's steps (a hand-edited saved process) is an error, not a panic.
        let mut short = learned.clone();
        short.posterior_mean_coef1.truncate(50);
        let err = short.fused_training_losses(&out, &x0, &[1, 60], &noise).unwrap_err();
        assert!(err.to_string().contains("steps in [0, 50)"), "{err}");
        // And the public entry gives the composition's numbers there.
        let a = learned.training_losses(&out, &x0, &[0, 5], &noise).unwrap();
        let b = learned.composed_training_losses(&out, &x0, &[0, 5], &noise).unwrap();
        assert_eq!(values(&a.loss), values(&b.loss));
    }
}
