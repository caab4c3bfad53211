//! AdamW as `torch.optim.AdamW`, the exponential moving average of the weights, and global-norm clipping, on
//! flat parameter buffers in f32 (f64 for f64 models).
//!
//! The arithmetic follows PyTorch's single-tensor AdamW step operation by operation (the scalars computed in f64,
//! then applied in the buffer's precision), so one step agrees with torch to the last bits of f32.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per parallel work item: large tensors are split, small ones run on one thread.
const CHUNK: usize = 1 << 15;
/// Accumulators of the vectorised reductions.
const LANES: usize = 16;

use crate::float::Float;

/// AdamW's hyper-parameters (PyTorch's names and defaults, except the learning rate: Latte's 1e-4).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// What one optimiser update needs besides the config.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Update {
    /// The 1-based optimiser step (for the bias corrections).
    pub step: u64,
    /// The scheduled learning rate (`AdamWConfig::lr` is not read).
    pub lr: f64,
    /// The factor on every gradient: clipping and loss unscaling (1 for none).
    pub grad_scale: f64,
}

/// The per-step constants of AdamW in the parameters' float type, and the update of one element: shared by the
/// step and by its dry run, so that the dry run's verdict is about exactly the values the step writes.
struct AdamWCoefficients<T> {
    decay: T,
    w1: T,
    b2: T,
    w2: T,
    neg_step: T,
    bc2: T,
    eps: T,
    gs: T,
    scaled: bool,
}

impl<T: Float> AdamWCoefficients<T> {
    fn new(update: Update, cfg: &AdamWConfig) -> Self {
        let Update { step, lr, grad_scale } = update;
        let bias1 = 1.0 - cfg.beta1.powi(step as i32);
        let bias2_sqrt = (1.0 - cfg.beta2.powi(step as i32)).sqrt();
        Self {
            decay: T::of(1.0 - lr * cfg.weight_decay),
            w1: T::of(1.0 - cfg.beta1),
            b2: T::of(cfg.beta2),
            w2: T::of(1.0 - cfg.beta2),
            neg_step: T::of(-(lr / bias1)),
            bc2: T::of(bias2_sqrt),
            eps: T::of(cfg.eps),
            gs: T::of(grad_scale),
            scaled: grad_scale != 1.0,
        }
    }

    /// The new (parameter, first moment, second moment) of one element.
    #[inline(always)]
    fn element(&self, p: T, g: T, m: T, v: T) -> (T, T, T) {
        let gi = if self.scaled { g * self.gs } else { g };
        let p = p * self.decay;
        // torch's lerp with weight < 0.5: m + w (g - m).
        let m = m + self.w1 * (gi - m);
        let v = v * self.b2 + self.w2 * gi * gi;
        let denom = v.sqrt() / self.bc2 + self.eps;
        (p + self.neg_step * (m / denom), m, v)
    }
}

/// One AdamW step in place: `param`, first moment `m` and second moment `v` updated from `grad · grad_scale`.
pub fn adamw_step<T: Float>(param: &mut [T], grad: &[T], m: &mut [T], v: &mut [T], update: Update, cfg: &AdamWConfig) {
    let c = AdamWCoefficients::<T>::new(update, cfg);
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            // Zipped iterators (no bounds checks) so that the loop vectorises.
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                (*p, *m, *v) = c.element(*p, *g, *m, *v);
            }
        });
}

/// Whether [`adamw_step`] with the same arguments would leave every parameter (and moment) finite. It reads
/// only (no copies), so that a step that would overflow can be refused with nothing changed.
pub fn adamw_stays_finite<T: Float>(
    param: &[T],
    grad: &[T],
    m: &[T],
    v: &[T],
    update: Update,
    cfg: &AdamWConfig,
) -> bool {
    let c = AdamWCoefficients::<T>::new(update, cfg);
    param
        .par_chunks(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks(CHUNK))
        .zip(v.par_chunks(CHUNK))
        .all(|(((p, g), m), v)| {
            (0..p.len()).all(|i| {
                let (p, m, v) = c.element(p[i], g[i], m[i], v[i]);
                // A negative second moment is refused too: it would make the next step's update NaN.
                p.to_f64().is_finite() && m.to_f64().is_finite() && v.to_f64().is_finite() && v.to_f64() >= 0.0
            })
        })
}

/// The largest |x| (0 for an empty slice; NaN where any value is not finite).
pub fn max_abs<T: Float>(x: &[T]) -> f64 {
    largest(x, true)
}

/// The largest value of a slice that can hold no negative value (second moments; 0 for an empty slice): NaN where
/// any value is negative or not finite, so that no bound is derived from it.
pub fn max_nonnegative<T: Float>(x: &[T]) -> f64 {
    largest(x, false)
}

/// The largest |x| (`abs`) or x (NaN where some x < 0), NaN where any value is not finite.
fn largest<T: Float>(x: &[T], abs: bool) -> f64 {
    x.par_chunks(CHUNK)
        .map(|c| {
            // Independent lanes, so that the reduction vectorises (one accumulator is a serial chain).
            let mut lanes = [T::ZERO; LANES];
            let mut valid = true;
            let mut blocks = c.chunks_exact(LANES);
            for b in &mut blocks {
                for (l, x) in lanes.iter_mut().zip(b) {
                    let a = if abs && *x < T::ZERO { T::ZERO - *x } else { *x };
                    valid &= a.is_finite() & (a >= T::ZERO);
                    *l = if a > *l { a } else { *l };
                }
            }
            let rest = blocks.remainder().iter().chain(&lanes);
            if !valid || rest.clone().any(|v| !v.is_finite() || (!abs && *v < T::ZERO)) {
                return f64::NAN;
            }
            rest.fold(0.0f64, |m, v| m.max(if abs { v.to_f64().abs() } else { v.to_f64() }))
        })
        .reduce(
            || 0.0,
            |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) },
        )
}

/// Largest magnitudes of one parameter's values, gradient and moments (for [`adamw_cannot_overflow`]).
#[derive(Clone, Copy, Debug)]
pub struct Magnitudes {
    pub param: f64,
    pub grad: f64,
    pub m: f64,
    /// The largest second moment, from [`max_nonnegative`]: NaN when any is negative (a value no AdamW step makes,
    /// whose square root is NaN), so that the bound declines and the exact dry run decides.
    pub v: f64,
}

/// Whether one AdamW step on values bounded by `mag` certainly stays finite in `T`, by a bound in f64 on every
/// intermediate of [`AdamWCoefficients::element`] (with half of `T`'s range as margin for rounding): the moments
/// are convex combinations, and the update is at most lr/bias1 · |m| / eps. When this says no, the exact
/// element-by-element dry run ([`adamw_stays_finite`]) decides, so no step is refused that would have stayed
/// finite; it is the cheap check in front of it (one max pass instead of the whole update computed twice).
pub fn adamw_cannot_overflow<T: Float>(mag: Magnitudes, update: Update, cfg: &AdamWConfig) -> bool {
    let limit = 0.5 * T::MAX_F64;
    let c = |v: f64| v.is_finite() && v < limit;
    // The bound below holds for second moments >= 0 only (NaN, from a negative one, fails here).
    if mag.v.is_nan() || mag.v < 0.0 {
        return false;
    }
    let Update { step, lr, grad_scale } = update;
    let bias1 = 1.0 - cfg.beta1.powi(step.min(i32::MAX as u64) as i32);
    if !(bias1 > 0.0 && cfg.eps > 0.0) {
        return false;
    }
    let g = mag.grad * grad_scale.abs();
    let m = mag.m.max(g);
    let v = mag.v.max(g * g);
    let bias2_sqrt = (1.0 - cfg.beta2.powi(step.min(i32::MAX as u64) as i32)).sqrt();
    let update_max = (lr / bias1).abs() * (m / cfg.eps);
    let p = mag.param * (1.0 - lr * cfg.weight_decay).abs() + update_max;
    let denom = v.sqrt() / bias2_sqrt + cfg.eps;
    [g, g * g, mag.m + g, m, v, denom, m / cfg.eps, update_max, p]
        .into_iter()
        .all(c)
}

/// [`adamw_step`] and [`ema_update`] in one pass over the values (the EMA reads the new parameter).
#[allow(clippy::too_many_arguments)] // the optimiser's buffers, one by one
pub fn adamw_ema_step<T: Float>(
    param: &mut [T],
    grad: &[T],
    m: &mut [T],
    v: &mut [T],
    ema: &mut [T],
    update: Update,
    cfg: &AdamWConfig,
    ema_decay: f64,
) {
    let c = AdamWCoefficients::<T>::new(update, cfg);
    let (d, w) = (T::of(ema_decay), T::of(1.0 - ema_decay));
    param
        .par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .zip(ema.par_chunks_mut(CHUNK))
        .for_each(|((((p, g), m), v), e)| {
            for ((((p, g), m), v), e) in p
                .iter_mut()
                .zip(g)
                .zip(m.iter_mut())
                .zip(v.iter_mut())
                .zip(e.iter_mut())
            {
                (*p, *m, *v) = c.element(*p, *g, *m, *v);
                *e = *e * d + *p * w;
            }
        });
}

/// `ema ← decay · ema + (1 − decay) · param`, as the official `update_ema`.
pub fn ema_update<T: Float>(ema: &mut [T], param: &[T], decay: f64) {
    let (d, w) = (T::of(decay), T::of(1.0 - decay));
    ema.par_chunks_mut(CHUNK)
        .zip(param.par_chunks(CHUNK))
        .for_each(|(e, p)| {
            for (e, p) in e.iter_mut().zip(p) {
                *e = *e * d + *p * w;
            }
        });
}

/// Σ x² in f64, in a fixed order (chunks in parallel, then summed in sequence): the same on every run.
pub fn sum_of_squares<T: Float>(g: &[T]) -> f64 {
    g.par_chunks(CHUNK)
        .map(|c| {
            // In f64, over independent lanes so that the loop vectorises.
            let mut lanes = [0.0f64; LANES];
            let mut blocks = c.chunks_exact(LANES);
            for b in &mut blocks {
                for (l, x) in lanes.iter_mut().zip(b) {
                    let x = x.to_f64();
                    *l += x * x;
                }
            }
            lanes.iter().sum::<f64>() + blocks.remainder().iter().map(|x| x.to_f64() * x.to_f64()).sum::<f64>()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .sum()
}

pub fn clip_coefficient(norm: f64, max_norm: f64) -> f64 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first step at learning rate `lr`, gradients unscaled.
    fn update(lr: f64) -> Update {
        Update {
            step: 1,
            lr,
            grad_scale: 1.0,
        }
    }

    /// Hand-computed first step: with m = v = 0 the update is −lr · g / (|g| + eps·…) ≈ −lr · sign(g).
    #[test]
    fn first_step_moves_by_lr_against_the_gradient() {
        let cfg = AdamWConfig::default();
        let mut p = vec![1.0f64, -2.0, 0.5];
        let g = vec![0.3f64, -4.0, 1e-3];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adamw_step(&mut p, &g, &mut m, &mut v, update(1e-2), &cfg);
        for ((p, p0), g) in p.iter().zip([1.0, -2.0, 0.5]).zip(&g) {
            let expected = p0 - 1e-2 * g / (g.abs() + 1e-8);
            assert!((p - expected).abs() < 1e-12, "{p} vs {expected}");
        }
    }

    #[test]
    fn decoupled_weight_decay_shrinks_weights_without_gradient() {
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..Default::default()
        };
        let mut p = vec![2.0f64];
        let (mut m, mut v) = (vec![0.0], vec![0.0]);
        adamw_step(&mut p, &[0.0], &mut m, &mut v, update(0.5), &cfg);
        assert!((p[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-12);
    }

    fn global_norm(grads: &[Vec<f32>]) -> f64 {
        grads.iter().map(|g| sum_of_squares(g)).sum::<f64>().sqrt()
    }

    #[test]
    fn norm_and_clip() {
        let mut g = vec![vec![3.0f32], vec![4.0f32, 0.0]];
        assert!((global_norm(&g) - 5.0).abs() < 1e-12);
        let c = clip_coefficient(5.0, 1.0) as f32;
        g.iter_mut().flatten().for_each(|x| *x *= c);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
        assert_eq!(clip_coefficient(0.5, 1.0), 1.0);
    }

    #[test]
    fn ema_moves_toward_params() {
        let mut e = vec![0.0f32; 100_000];
        ema_update(&mut e, &vec![1.0f32; 100_000], 0.9);
        assert!(e.iter().all(|x| (*x - 0.1).abs() < 1e-7));
    }
}

/// An optimiser step about to be taken: the loss it comes from, the loss scale its gradients carry, the clipping
/// norm (None: no clipping at this step), and the 1-based step with its scheduled learning rate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    pub loss: f64,
    pub loss_scale: f64,
    pub clip: Option<f64>,
    pub step: u64,
    pub lr: f64,
}

impl Pending {
    /// The unscaled global norm from the summed squares of the (scaled) gradients, and the update to take: None
    /// when the loss or the norm is not finite. Clipping (torch's clip_grad_norm_ factor) and unscaling fold into
    /// one factor on each gradient.
    pub fn update(&self, sum_sq: f64) -> (f64, Option<Update>) {
        let norm = sum_sq.sqrt() / self.loss_scale;
        if !(self.loss.is_finite() && norm.is_finite()) {
            return (norm, None);
        }
        let grad_scale = self.clip.map_or(1.0, |max| clip_coefficient(norm, max)) / self.loss_scale;
        let update = Update {
            step: self.step,
            lr: self.lr,
            grad_scale,
        };
        (norm, Some(update))
    }
}

/// Why an optimiser step was not applied.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    No,
    /// The loss or the gradients are not finite.
    NonFinite,
    /// The update would make a parameter or a moment non-finite.
    Overflow,
}
