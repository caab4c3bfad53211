//! Videos longer than a model was trained on: the whole network over sliding windows of the trained length along
//! the frame axis, the windows' outputs fused per frame with weights that fall towards a window's edges, and the
//! starting noise rescheduled as FreeNoise does (later frames reuse shuffled noise of the frames one window back),
//! so that content stays coherent across windows.
//!
//! Why whole-network windows, not windowed temporal attention inside one pass: Latte adds its temporal position
//! table (absolute, as long as the training clips) to the residual stream once, before the first temporal block
//! (and variant 2 fuses time late, variant 4 splits heads, the tubelet embedding folds frames into tokens). A frame
//! that belongs to two windows would need two positions in one residual stream. Running the network on each window
//! gives every window exactly the positions, the context length and the token layout it was trained on, for every
//! variant and for the text-to-video transformer alike, and the memory of one window at a time. The price is that
//! spatial layers run once per window a frame is in (about `window / stride` times).

use candle_core::{DType, Device, Tensor, Var};

use super::attention_hook::{AttentionHook, OffsetHook};
use super::condition::Condition;
use super::denoiser::{Denoiser, DenoiserSpec, LatentLayout, LossFn, StagedPass};
use crate::error::{value_error, LatteError, Result};
use crate::rng::Generator;
use crate::weights::ParamStore;

/// The frame axis of a layout.
pub fn frame_axis(layout: LatentLayout) -> usize {
    match layout {
        LatentLayout::FramesFirst => 1,
        LatentLayout::ChannelsFirst => 2,
    }
}

/// The frames a model was trained on (its latents' frame count).
pub fn trained_frames(model: &dyn Denoiser) -> usize {
    model.latent_shape(1)[frame_axis(model.spec().layout)]
}

/// First frames of the windows of `window` frames, `stride` apart, over `frames` frames; the last window ends at
/// the last frame (so it may overlap its neighbour more than the others do).
pub fn window_starts(frames: usize, window: usize, stride: usize) -> Result<Vec<usize>> {
    if window == 0 || frames < window {
        return Err(value_error(
            "num_frames",
            format!("at least the trained {window} frames"),
            frames,
        ));
    }
    if stride == 0 || stride > window {
        return Err(value_error(
            "window_stride",
            format!("an int in [1, {window}] (the window)"),
            stride,
        ));
    }
    let mut starts: Vec<usize> = (0..=frames - window).step_by(stride).collect();
    if starts.last() != Some(&(frames - window)) {
        starts.push(frames - window);
    }
    Ok(starts)
}

/// The fusion weight of the `i`-th frame of a window: a triangle, `min(i + 1, window - i)`, so a frame counts most
/// in the window where it sits in the middle and the seams between windows blend.
pub fn frame_weight(i: usize, window: usize) -> f64 {
    (i + 1).min(window - i) as f64
}

/// A denoiser over `frames` frames made of a model trained on fewer: [`Denoiser::denoise`] runs the model on each
/// window and fuses the outputs. Everything else is the model's, asked about one window.
pub struct TemporalWindows<'a> {
    inner: &'a dyn Denoiser,
    frames: usize,
    window: usize,
    stride: usize,
    starts: Vec<usize>,
}

impl<'a> TemporalWindows<'a> {
    /// `stride` None: half the window (rounded up).
    pub fn new(inner: &'a dyn Denoiser, frames: usize, stride: Option<usize>) -> Result<Self> {
        let window = trained_frames(inner);
        let stride = stride.unwrap_or(window.div_ceil(2));
        let starts = window_starts(frames, window, stride)?;
        Ok(Self {
            inner,
            frames,
            window,
            stride,
            starts,
        })
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The first frame of every window.
    pub fn starts(&self) -> &[usize] {
        &self.starts
    }

    fn axis(&self) -> usize {
        frame_axis(self.inner.spec().layout)
    }

    /// `dims` with one window's frames.
    fn window_dims(&self, dims: &[usize]) -> Vec<usize> {
        let mut d = dims.to_vec();
        if let Some(f) = d.get_mut(self.axis()) {
            *f = self.window;
        }
        d
    }

    /// The windows' outputs (one per window, in order) fused into the whole video's: each weighted per frame by
    /// [`frame_weight`], added up, divided by the frame's total weight.
    fn fuse(&self, outs: &[Tensor]) -> Result<Tensor> {
        let axis = self.axis();
        let first = outs
            .first()
            .ok_or_else(|| LatteError::Value("num_frames: no window".into()))?;
        let (w, total) = self.weights(first.rank(), first.dtype(), first.device())?;
        let mut fused: Option<Tensor> = None;
        for (&s, out) in self.starts.iter().zip(outs) {
            // The window's weighted output, padded to the whole video, added up.
            let out = out
                .broadcast_mul(&w)?
                .pad_with_zeros(axis, s, self.frames - s - self.window)?;
            fused = Some(match fused {
                Some(f) => (f + out)?,
                None => out,
            });
        }
        let fused = fused.ok_or_else(|| LatteError::Value("num_frames: no window".into()))?;
        Ok(fused.broadcast_div(&total)?)
    }

    /// Per-frame sums of the weights of the windows a frame is in, broadcastable over latents of rank `rank`.
    fn weights(&self, rank: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let mut shape = vec![1usize; rank];
        shape[self.axis()] = self.window;
        let per_frame: Vec<f32> = (0..self.window).map(|i| frame_weight(i, self.window) as f32).collect();
        let w = Tensor::from_vec(per_frame.clone(), shape.as_slice(), device)?.to_dtype(dtype)?;
        let mut total = vec![0f32; self.frames];
        for &s in &self.starts {
            for (i, wi) in per_frame.iter().enumerate() {
                total[s + i] += wi;
            }
        }
        shape[self.axis()] = self.frames;
        let total = Tensor::from_vec(total, shape.as_slice(), device)?.to_dtype(dtype)?;
        Ok((w, total))
    }
}

impl Denoiser for TemporalWindows<'_> {
    fn spec(&self) -> DenoiserSpec {
        self.inner.spec()
    }

    fn store(&self) -> &ParamStore {
        self.inner.store()
    }

    fn latent_shape(&self, batch: usize) -> Vec<usize> {
        let mut d = self.inner.latent_shape(batch);
        d[self.axis()] = self.frames;
        d
    }

    fn null_condition(&self, cond: &Condition) -> Result<Condition> {
        self.inner.null_condition(cond)
    }

    fn check_latents(&self, x: &Tensor) -> Result<Tensor> {
        let axis = self.axis();
        if x.rank() <= axis || x.dim(axis)? != self.frames {
            return Err(LatteError::Value(format!(
                "latents: expected {} frames on axis {axis} (the long video asked for), got shape {:?}",
                self.frames,
                x.dims()
            )));
        }
        // Everything but the frame count is the model's to check; one window stands for all.
        self.inner.check_latents(&x.narrow(axis, 0, self.window)?)?;
        Ok(x.to_device(self.inner.device())?.to_dtype(self.inner.dtype())?)
    }

    fn activation_elements(&self, dims: &[usize], grad: bool) -> u128 {
        // One window at a time, plus the fused output (the size of the latents).
        let out: u128 = dims.iter().map(|&d| d as u128).product();
        self.inner
            .activation_elements(&self.window_dims(dims), grad)
            .saturating_add(out.saturating_mul(2))
    }

    fn check_timesteps(&self, t: &Tensor, batch: usize) -> Result<Tensor> {
        self.inner.check_timesteps(t, batch)
    }

    fn check_condition(&self, cond: &Condition, x_dims: &[usize]) -> Result<Condition> {
        self.inner.check_condition(cond, &self.window_dims(x_dims))
    }

    fn denoise(&self, x: &Tensor, t: &Tensor, cond: &Condition, grad: bool) -> Result<Tensor> {
        let axis = self.axis();
        let outs = self
            .starts
            .iter()
            .map(|&s| self.inner.denoise(&x.narrow(axis, s, self.window)?, t, cond, grad))
            .collect::<Result<Vec<_>>>()?;
        self.fuse(&outs)
    }

    fn staged<'b>(&'b self, x: &Tensor, t: &Tensor, cond: &Condition) -> Result<Box<dyn StagedPass + 'b>> {
        let axis = self.axis();
        let passes = self
            .starts
            .iter()
            .map(|&s| self.inner.staged(&x.narrow(axis, s, self.window)?, t, cond))
            .collect::<Result<Vec<_>>>()?;
        let hidden = Tensor::cat(&passes.iter().map(|p| p.hidden()).collect::<Vec<_>>(), 0)?;
        Ok(Box::new(WindowedPass {
            windows: self,
            passes,
            hidden,
        }))
    }

    fn teacache_fit(&self) -> Option<crate::model::teacache_fit::TeaCacheFit> {
        self.inner.teacache_fit()
    }

    fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.inner.trainable_vars()
    }

    fn loss_and_grads(
        &self,
        _x: &Tensor,
        _t: &Tensor,
        _cond: &Condition,
        _checkpoint: bool,
        _loss_fn: &mut LossFn<'_>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        Err(LatteError::Value(
            "num_frames: training on videos longer than the model's clips is not supported (long videos are a \
             sampling method); train on clips of the trained length"
                .into(),
        ))
    }
}

/// One step's staged pass over every window, for a step cache: the windows' block-stack inputs side by side on the
/// batch axis (so a cache watches and reuses the whole video's), each window's blocks and final layer run by its
/// own pass, and the final outputs fused as [`Denoiser::denoise`] fuses them.
struct WindowedPass<'b> {
    windows: &'b TemporalWindows<'b>,
    passes: Vec<Box<dyn StagedPass + 'b>>,
    hidden: Tensor,
}

impl WindowedPass<'_> {
    /// `hidden` cut back into the windows' parts.
    fn parts(&self, hidden: &Tensor) -> Result<Vec<Tensor>> {
        let mut start = 0;
        let mut parts = Vec::with_capacity(self.passes.len());
        for p in &self.passes {
            let n = p.hidden().dim(0)?;
            parts.push(hidden.narrow(0, start, n)?);
            start += n;
        }
        Ok(parts)
    }
}

impl StagedPass for WindowedPass<'_> {
    fn hidden(&self) -> &Tensor {
        &self.hidden
    }

    fn first_block_input(&self) -> Result<Tensor> {
        let parts = self
            .passes
            .iter()
            .map(|p| p.first_block_input())
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    fn num_blocks(&self) -> usize {
        self.passes.iter().map(|p| p.num_blocks()).sum()
    }

    fn attention_sites(&self) -> [usize; 3] {
        let mut sites = [0; 3];
        for p in &self.passes {
            for (total, n) in sites.iter_mut().zip(p.attention_sites()) {
                *total += n;
            }
        }
        sites
    }

    fn blocks(&self, hidden: &Tensor, hook: Option<&dyn AttentionHook>) -> Result<(Tensor, usize)> {
        let mut outs = Vec::with_capacity(self.passes.len());
        let mut ran = 0;
        // Each window's sites are numbered after the earlier windows', so that a cache keeps one entry per layer
        // per window.
        let mut offset = [0; 3];
        for (p, part) in self.passes.iter().zip(self.parts(hidden)?) {
            let (out, n) = match hook {
                Some(inner) => {
                    let shifted = OffsetHook { inner, offset };
                    p.blocks(&part, Some(&shifted))?
                }
                None => p.blocks(&part, None)?,
            };
            for (o, n) in offset.iter_mut().zip(p.attention_sites()) {
                *o += n;
            }
            outs.push(out);
            ran += n;
        }
        Ok((Tensor::cat(&outs, 0)?, ran))
    }

    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let outs = self
            .passes
            .iter()
            .zip(self.parts(hidden)?)
            .map(|(p, part)| p.head(&part))
            .collect::<Result<Vec<_>>>()?;
        self.windows.fuse(&outs)
    }
}

/// FreeNoise's noise rescheduling: the first `window` frames of `noise` are kept; every later run of `stride`
/// frames takes the noise of the `stride` frames one window back, in an order shuffled by `rng`, so that every
/// window starts from a rearrangement of the same noise frames (content stays coherent across windows) while no
/// two neighbouring runs are equal.
pub fn reschedule_noise(
    noise: &Tensor,
    axis: usize,
    window: usize,
    stride: usize,
    rng: &mut Generator,
) -> Result<Tensor> {
    let frames = noise.dim(axis)?;
    window_starts(frames, window, stride)?;
    let mut order: Vec<usize> = (0..frames.min(window)).collect();
    let mut start = window;
    while start < frames {
        let run = stride.min(frames - start);
        let keys = rng.uniform(run, 0.0, 1.0);
        let mut idx: Vec<usize> = (0..run).collect();
        idx.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        // Frame start - window + k holds, after the earlier runs, an original frame's noise: follow the chain.
        let back: Vec<usize> = idx.iter().map(|&k| order[start - window + k]).collect();
        order.extend(back);
        start += run;
    }
    let index = Tensor::from_vec(
        order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
        frames,
        noise.device(),
    )?;
    Ok(noise.index_select(&index, axis)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_frame_and_end_at_the_last() {
        assert_eq!(window_starts(8, 8, 4).unwrap(), vec![0]);
        assert_eq!(window_starts(16, 8, 4).unwrap(), vec![0, 4, 8]);
        assert_eq!(window_starts(18, 8, 4).unwrap(), vec![0, 4, 8, 10]);
        assert_eq!(window_starts(20, 8, 8).unwrap(), vec![0, 8, 12]);
        assert!(window_starts(7, 8, 4).is_err());
        assert!(window_starts(16, 8, 0).is_err());
        assert!(window_starts(16, 8, 9).is_err());
    }

    #[test]
    fn rescheduled_noise_keeps_the_first_window_and_reuses_its_frames() {
        let noise = Tensor::arange(0f32, 20.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 20, 1))
            .unwrap();
        let mut rng = Generator::new(3);
        let out = reschedule_noise(&noise, 1, 8, 4, &mut rng).unwrap();
        let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(&v[..8], &[0., 1., 2., 3., 4., 5., 6., 7.]);
        // Every run of 4 is a permutation of the 4 frames one window back.
        for s in (8..20).step_by(4) {
            let mut run = v[s..s + 4].to_vec();
            let mut back = v[s - 8..s - 4].to_vec();
            run.sort_by(f32::total_cmp);
            back.sort_by(f32::total_cmp);
            assert_eq!(run, back, "run at {s}");
        }
        // Same seed, same noise.
        let again = reschedule_noise(&noise, 1, 8, 4, &mut Generator::new(3)).unwrap();
        assert_eq!(v, again.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
