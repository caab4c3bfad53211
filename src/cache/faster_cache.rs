//! **FasterCache** (Lv et al. 2024, "FasterCache: Training-Free Video Diffusion Model Acceleration with High
//! Quality"): two reuses, as diffusers' `FasterCacheConfig` hooks implement them.
//!
//! *CFG-Cache* (the whole model, guided runs): at step `i` with timestep `t`, the unconditional branch is left out
//! (only the conditional half of the batch runs) when `i > 0`, `low < t < high` for
//! `unconditional_batch_timestep_skip_range` and `i % unconditional_batch_skip_range != 0`. Its output is then
//! approximated from the conditional output `c` and the last computed difference `Δ = uncond − cond` split into
//! its low and high spatial frequencies: `uncond ≈ c + Δ_low + Δ_high`, where each band is first multiplied by its
//! weight (`alpha_low_frequency` while `t` is inside `low_frequency_weight_update_timestep_range`, else 1;
//! likewise for the high band), and the multiplied bands are kept, so that the weights compound over consecutive
//! approximated steps (as diffusers keeps them). At a step that runs both branches, `Δ` is measured anew. The
//! bands are diffusers' (and the FasterCache code's): per frame and channel, the 2-D Fourier transform over the
//! latent height and width, low = the frequencies within a radius of `min(H, W) / 5` (integer division) of zero,
//! high = the rest. The filter is linear, so `c + Δ_low + Δ_high` is diffusers' `ifft(fft(c) + Δ̂_low + Δ̂_high)`
//! up to rounding; it is computed here as two real DFT matrix products per axis instead of an FFT.
//!
//! *Attention reuse* (each spatial self-attention layer, and each temporal one when
//! `temporal_attention_block_skip_range` is set; never cross-attention): the layer's `i`-th call computes unless
//! `low < t < high` for its kind's timestep range and not (`i > 0` and `i % skip_range == 0`); and with guidance it
//! may only reuse in a pass that runs the conditional half alone (diffusers keeps the conditional half of each
//! output, so a full batch always computes). A reused call returns `o₁ + w · (o₁ − o₂)` from the layer's last two
//! outputs (`w = attention_weight`, diffusers' default 0.5; its outputs, reused ones included, are what is kept; the
//! first call keeps its output as both). Without guidance the whole batch follows the attention rule (diffusers
//! does so only for guidance-distilled models; with an undistilled model and no guidance its hook never reuses).
//!
//! Departures from diffusers: `attention_weight` is a number, not a callback; there is no `tensor_format` (the
//! model knows its layout: height and width are always the last two axes) and no `is_guidance_distilled` (the loop
//! knows whether it guides); the guided batch is [cond | uncond] (diffusers' is [uncond | cond]).

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::{bytes, check_skip_range, check_timestep_range, within, AttentionLog, CacheReport, StepInfo, StepRecord};
use crate::error::{value_error, LatteError, Result};
use crate::model::{AttentionHook, AttentionKind, AttentionSite, Condition, Denoiser};

/// FasterCache's settings, under diffusers' names and with its defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct FasterCacheConfig {
    pub spatial_attention_block_skip_range: Option<usize>,
    pub temporal_attention_block_skip_range: Option<usize>,
    pub spatial_attention_timestep_skip_range: (f64, f64),
    pub temporal_attention_timestep_skip_range: (f64, f64),
    pub low_frequency_weight_update_timestep_range: (f64, f64),
    pub high_frequency_weight_update_timestep_range: (f64, f64),
    pub alpha_low_frequency: f64,
    pub alpha_high_frequency: f64,
    /// Run the unconditional branch every `n` steps inside its timestep range (None: always).
    pub unconditional_batch_skip_range: Option<usize>,
    pub unconditional_batch_timestep_skip_range: (f64, f64),
    /// The extrapolation weight of reused attention outputs.
    pub attention_weight: f64,
}

impl Default for FasterCacheConfig {
    fn default() -> Self {
        Self {
            spatial_attention_block_skip_range: Some(2),
            temporal_attention_block_skip_range: None,
            spatial_attention_timestep_skip_range: (-1.0, 681.0),
            temporal_attention_timestep_skip_range: (-1.0, 681.0),
            low_frequency_weight_update_timestep_range: (99.0, 901.0),
            high_frequency_weight_update_timestep_range: (-1.0, 301.0),
            alpha_low_frequency: 1.1,
            alpha_high_frequency: 1.1,
            unconditional_batch_skip_range: Some(5),
            unconditional_batch_timestep_skip_range: (-1.0, 641.0),
            attention_weight: 0.5,
        }
    }
}

fn check_finite(value: f64, arg: &str) -> Result<f64> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(value_error(arg, "a finite number", value))
    }
}

impl FasterCacheConfig {
    /// The settings checked by name: skip ranges None or >= 1, timestep ranges finite with low < high, finite
    /// weights.
    pub fn checked(self) -> Result<Self> {
        check_skip_range(
            self.spatial_attention_block_skip_range,
            "spatial_attention_block_skip_range",
        )?;
        check_skip_range(
            self.temporal_attention_block_skip_range,
            "temporal_attention_block_skip_range",
        )?;
        check_skip_range(self.unconditional_batch_skip_range, "unconditional_batch_skip_range")?;
        for (range, arg) in [
            (
                self.spatial_attention_timestep_skip_range,
                "spatial_attention_timestep_skip_range",
            ),
            (
                self.temporal_attention_timestep_skip_range,
                "temporal_attention_timestep_skip_range",
            ),
            (
                self.low_frequency_weight_update_timestep_range,
                "low_frequency_weight_update_timestep_range",
            ),
            (
                self.high_frequency_weight_update_timestep_range,
                "high_frequency_weight_update_timestep_range",
            ),
            (
                self.unconditional_batch_timestep_skip_range,
                "unconditional_batch_timestep_skip_range",
            ),
        ] {
            check_timestep_range(range, arg)?;
        }
        check_finite(self.alpha_low_frequency, "alpha_low_frequency")?;
        check_finite(self.alpha_high_frequency, "alpha_high_frequency")?;
        check_finite(self.attention_weight, "attention_weight")?;
        Ok(self)
    }

    fn attention_of(&self, kind: AttentionKind) -> Option<(usize, (f64, f64))> {
        match kind {
            AttentionKind::Spatial => self
                .spatial_attention_block_skip_range
                .map(|n| (n, self.spatial_attention_timestep_skip_range)),
            AttentionKind::Temporal => self
                .temporal_attention_block_skip_range
                .map(|n| (n, self.temporal_attention_timestep_skip_range)),
            AttentionKind::Cross => None,
        }
    }
}

/// One attention layer's state: its calls so far and its last two kept outputs (older first).
#[derive(Default)]
struct Site {
    calls: usize,
    kept: Option<(Tensor, Tensor)>,
}

struct Hook {
    cfg: FasterCacheConfig,
    timestep: f64,
    /// The run guides, and this pass runs the full [cond | uncond] batch.
    guided: bool,
    full_batch: bool,
    sites: HashMap<AttentionSite, Site>,
    log: AttentionLog,
}

impl Hook {
    fn held_bytes(&self) -> usize {
        self.sites
            .values()
            .filter_map(|s| s.kept.as_ref())
            .map(|(older, newer)| bytes(older) + bytes(newer))
            .sum()
    }
}

/// `a + w · (a − b)`.
fn extrapolate(newer: &Tensor, older: &Tensor, weight: f64) -> candle_core::Result<Tensor> {
    newer + ((newer - older)? * weight)?
}

impl AttentionHook for RefCell<Hook> {
    fn attention(
        &self,
        site: AttentionSite,
        compute: &mut dyn FnMut() -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let mut hook = self.borrow_mut();
        let Some((n, range)) = hook.cfg.attention_of(site.kind) else {
            hook.log.record(site, true);
            drop(hook);
            return compute();
        };
        let in_range = within(range, hook.timestep);
        let may_reuse = !hook.guided || !hook.full_batch;
        let weight = hook.cfg.attention_weight;
        let state = hook.sites.entry(site).or_default();
        let due = state.calls > 0 && state.calls % n == 0;
        let reused = match &state.kept {
            Some((older, newer)) if in_range && !due && may_reuse => Some(extrapolate(newer, older, weight)?),
            _ => None,
        };
        state.calls += 1;
        hook.log.record(site, reused.is_none());
        let (out, keep) = match reused {
            Some(out) => (out.clone(), out),
            None => {
                drop(hook);
                let out = compute()?;
                hook = self.borrow_mut();
                // Of a full guided batch, the conditional half (its first rows) is kept.
                let keep = if hook.guided && hook.full_batch {
                    out.narrow(0, 0, out.dim(0)? / 2)?
                } else {
                    out.clone()
                };
                (out, keep)
            }
        };
        let keep = keep.detach();
        if let Some(state) = hook.sites.get_mut(&site) {
            state.kept = Some(match state.kept.take() {
                Some((_, newer)) => (newer, keep),
                None => (keep.clone(), keep),
            });
        }
        Ok(out)
    }
}

/// The low-pass filter of one latent size: `x ↦ Re(F⁻¹(M ⊙ F x))` over the last two axes, with F the 2-D DFT and M
/// the disc of radius `min(H, W) / 5` around the zero frequency (fftshift-centred, as diffusers' mask).
struct LowPass {
    cos_h: Tensor,
    sin_h: Tensor,
    cos_w: Tensor,
    sin_w: Tensor,
    mask: Tensor,
    scale: f64,
}

impl LowPass {
    fn new(h: usize, w: usize, device: &Device) -> Result<Self> {
        let dft = |n: usize| -> Result<(Tensor, Tensor)> {
            let mut c = Vec::with_capacity(n * n);
            let mut s = Vec::with_capacity(n * n);
            for j in 0..n {
                for k in 0..n {
                    // (j·k mod n) keeps the angle small, so the tables are exact to f32 precision for any n.
                    let angle = 2.0 * std::f64::consts::PI * ((j * k) % n) as f64 / n as f64;
                    c.push(angle.cos() as f32);
                    s.push(angle.sin() as f32);
                }
            }
            Ok((
                Tensor::from_vec(c, (n, n), device)?,
                Tensor::from_vec(s, (n, n), device)?,
            ))
        };
        let (cos_h, sin_h) = dft(h)?;
        let (cos_w, sin_w) = dft(w)?;
        let radius = (h.min(w) / 5) as i64;
        // Frequency index u sits at (u + n/2) mod n after fftshift; the disc is centred at n/2.
        let centred = |u: usize, n: usize| ((u + n / 2) % n) as i64 - (n / 2) as i64;
        let mask: Vec<f32> = (0..h * w)
            .map(|i| {
                let (y, x) = (centred(i / w, h), centred(i % w, w));
                if x * x + y * y <= radius * radius {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        Ok(Self {
            cos_h,
            sin_h,
            cos_w,
            sin_w,
            mask: Tensor::from_vec(mask, (h, w), device)?,
            scale: 1.0 / (h * w) as f64,
        })
    }

    /// The low band of `x` (…, H, W), f32.
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let x = x.to_dtype(DType::F32)?.reshape(((), h, w))?;
        let left = |m: &Tensor, t: &Tensor| m.broadcast_matmul(t);
        let right = |t: &Tensor, m: &Tensor| t.broadcast_matmul(m);
        // F x F with F = C − iS: real C x C − S x S, imaginary −(S x C + C x S).
        let (cx, sx) = (left(&self.cos_h, &x)?, left(&self.sin_h, &x)?);
        let re = (right(&cx, &self.cos_w)? - right(&sx, &self.sin_w)?)?;
        let im = ((right(&sx, &self.cos_w)? + right(&cx, &self.sin_w)?)? * -1.0)?;
        let (re, im) = (re.broadcast_mul(&self.mask)?, im.broadcast_mul(&self.mask)?);
        // F̄ Z F̄ / (H·W) with F̄ = C + iS, real part only.
        let p = (left(&self.cos_h, &re)? - left(&self.sin_h, &im)?)?;
        let q = (left(&self.cos_h, &im)? + left(&self.sin_h, &re)?)?;
        let out = ((right(&p, &self.cos_w)? - right(&q, &self.sin_w)?)? * self.scale)?;
        Ok(out.reshape(dims)?)
    }
}

/// FasterCache's state over one sampling run.
pub(crate) struct FasterCacheState {
    hook: RefCell<Hook>,
    /// The last measured guidance difference's low and high bands (weights applied so far).
    bands: Option<(Tensor, Tensor)>,
    low_pass: Option<LowPass>,
    report: CacheReport,
}

impl FasterCacheState {
    pub(crate) fn new(cfg: &FasterCacheConfig) -> Self {
        Self {
            hook: RefCell::new(Hook {
                cfg: cfg.clone(),
                timestep: 0.0,
                guided: false,
                full_batch: true,
                sites: HashMap::new(),
                log: AttentionLog::default(),
            }),
            bands: None,
            low_pass: None,
            report: CacheReport {
                policy: "fastercache".into(),
                ..CacheReport::default()
            },
        }
    }

    /// The model's output at one step by the two rules.
    pub(crate) fn denoise(
        &mut self,
        model: &dyn Denoiser,
        x: &Tensor,
        t: &Tensor,
        cond: &Condition,
        step: StepInfo,
    ) -> Result<Tensor> {
        let cfg = self.hook.borrow().cfg.clone();
        let skip_uncond = step.guided
            && step.index > 0
            && self.bands.is_some()
            && within(cfg.unconditional_batch_timestep_skip_range, step.timestep)
            && cfg.unconditional_batch_skip_range.is_some_and(|n| step.index % n != 0);
        {
            let mut hook = self.hook.borrow_mut();
            hook.timestep = step.timestep;
            hook.guided = step.guided;
            hook.full_batch = !skip_uncond;
        }
        let half = x.dim(0)? / 2;
        let (x_run, t_run, cond_run) = if skip_uncond {
            (x.narrow(0, 0, half)?, t.narrow(0, 0, half)?, cond.narrow(0, half)?)
        } else {
            (x.clone(), t.clone(), cond.clone())
        };
        let pass = model.staged(&x_run, &t_run, &cond_run)?;
        let (out, ran) = pass.blocks(pass.hidden(), Some(&self.hook))?;
        let out = pass.head(&out)?.detach();
        let out = if !step.guided {
            out
        } else if skip_uncond {
            let (low, high) = self
                .bands
                .take()
                .ok_or_else(|| LatteError::Value("FasterCache: no guidance difference before a skip".into()))?;
            let weight = |range: (f64, f64), alpha: f64| if within(range, step.timestep) { alpha } else { 1.0 };
            let low = (low * weight(cfg.low_frequency_weight_update_timestep_range, cfg.alpha_low_frequency))?;
            let high = (high
                * weight(
                    cfg.high_frequency_weight_update_timestep_range,
                    cfg.alpha_high_frequency,
                ))?;
            let uncond = (out.to_dtype(DType::F32)? + (&low + &high)?)?.to_dtype(out.dtype())?;
            self.bands = Some((low, high));
            Tensor::cat(&[&out, &uncond], 0)?
        } else {
            let (c, u) = (out.narrow(0, 0, half)?, out.narrow(0, half, half)?);
            let delta = (u.to_dtype(DType::F32)? - c.to_dtype(DType::F32)?)?;
            let dims = delta.dims().to_vec();
            let (h, w) = (dims[dims.len() - 2], dims[dims.len() - 1]);
            let filter = match self.low_pass.take() {
                Some(filter) => filter,
                None => LowPass::new(h, w, delta.device())?,
            };
            let low = filter.apply(&delta)?;
            self.low_pass = Some(filter);
            let high = (&delta - &low)?;
            self.bands = Some((low, high));
            out
        };
        let hook = self.hook.borrow();
        self.report.blocks_per_pass = pass.num_blocks();
        self.report.blocks_computed += ran;
        hook.log.finish_into(&mut self.report, pass.attention_sites());
        let held = hook.held_bytes() + self.bands.as_ref().map_or(0, |(l, h)| bytes(l) + bytes(h));
        self.report.cache_bytes = self.report.cache_bytes.max(held);
        drop(hook);
        self.report.steps.push(StepRecord {
            timestep: step.timestep,
            computed: true,
            attention: self.hook.borrow_mut().log.take_step(),
            uncond_computed: step.guided.then_some(!skip_uncond),
            ..StepRecord::default()
        });
        Ok(out)
    }

    pub(crate) fn finish(self) -> CacheReport {
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The low band equals the masked inverse DFT computed term by term in f64.
    #[test]
    fn the_low_band_is_the_masked_inverse_dft() {
        for (h, w) in [(8, 8), (10, 6), (5, 7)] {
            let mut rng = crate::rng::Generator::new(3);
            let values: Vec<f32> = rng.normal(2 * h * w, 0.0, 1.0).iter().map(|&v| v as f32).collect();
            let x = Tensor::from_vec(values.clone(), (2, h, w), &Device::Cpu).unwrap();
            let got = LowPass::new(h, w, &Device::Cpu).unwrap().apply(&x).unwrap();
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let radius = (h.min(w) / 5) as i64;
            let signed = |u: usize, n: usize| ((u + n / 2) % n) as i64 - (n / 2) as i64;
            let tau = 2.0 * std::f64::consts::PI;
            for b in 0..2 {
                let v = |y: usize, x: usize| values[(b * h + y) * w + x] as f64;
                // Spectrum, masked.
                let mut spec = vec![(0.0f64, 0.0f64); h * w];
                for u in 0..h {
                    for k in 0..w {
                        let (fy, fx) = (signed(u, h), signed(k, w));
                        if fy * fy + fx * fx > radius * radius {
                            continue;
                        }
                        let (mut re, mut im) = (0.0, 0.0);
                        for y in 0..h {
                            for x in 0..w {
                                let a = -tau * ((u * y) as f64 / h as f64 + (k * x) as f64 / w as f64);
                                re += v(y, x) * a.cos();
                                im += v(y, x) * a.sin();
                            }
                        }
                        spec[u * w + k] = (re, im);
                    }
                }
                for y in 0..h {
                    for x in 0..w {
                        let mut re = 0.0;
                        for u in 0..h {
                            for k in 0..w {
                                let a = tau * ((u * y) as f64 / h as f64 + (k * x) as f64 / w as f64);
                                let (sr, si) = spec[u * w + k];
                                re += sr * a.cos() - si * a.sin();
                            }
                        }
                        let expected = re / (h * w) as f64;
                        let g = got[(b * h + y) * w + x] as f64;
                        assert!(
                            (g - expected).abs() < 1e-4,
                            "({h}, {w}) at {b},{y},{x}: {g} vs {expected}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn settings_are_checked_by_name() {
        let bad = FasterCacheConfig {
            unconditional_batch_skip_range: Some(0),
            ..FasterCacheConfig::default()
        };
        let e = bad.checked().unwrap_err().to_string();
        assert!(e.starts_with("unconditional_batch_skip_range: expected"), "{e}");
        let bad = FasterCacheConfig {
            low_frequency_weight_update_timestep_range: (5.0, 1.0),
            ..FasterCacheConfig::default()
        };
        let e = bad.checked().unwrap_err().to_string();
        assert!(
            e.starts_with("low_frequency_weight_update_timestep_range: expected"),
            "{e}"
        );
        let bad = FasterCacheConfig {
            attention_weight: f64::NAN,
            ..FasterCacheConfig::default()
        };
        assert!(bad.checked().unwrap_err().to_string().starts_with("attention_weight"));
        assert!(FasterCacheConfig::default().checked().is_ok());
    }
}
