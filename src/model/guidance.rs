//! Classifier-free guidance: how the conditional and unconditional halves of one model output are mixed.

use candle_core::Tensor;

use crate::error::Result;

/// How classifier-free guidance mixes the two branches' outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuidanceRule {
    /// The official Latte `forward_with_cfg`: the prediction channels are guided, the variance values come
    /// from the conditional branch.
    PredictionChannels,
    /// diffusers' pipelines: every output channel is guided.
    AllChannels,
}

/// Classifier-free guidance of `out`, the model's output over a batch of [conditional | unconditional]
/// halves: `uncond + scale · (cond − uncond)` on the channels `rule` names (channels along `channel_axis`).
/// Returns one half.
pub fn apply_guidance(
    out: &Tensor,
    scale: f64,
    rule: GuidanceRule,
    channel_axis: usize,
    latent_channels: usize,
) -> Result<Tensor> {
    let half = out.dim(0)? / 2;
    let (cond, uncond) = (out.narrow(0, 0, half)?, out.narrow(0, half, half)?);
    let mix = |c: &Tensor, u: &Tensor| -> candle_core::Result<Tensor> { u + ((c - u)? * scale)? };
    let axis = channel_axis;
    let channels = out.dim(axis)?;
    Ok(match rule {
        GuidanceRule::AllChannels => mix(&cond, &uncond)?,
        GuidanceRule::PredictionChannels if channels == latent_channels => mix(&cond, &uncond)?,
        GuidanceRule::PredictionChannels => {
            let c = latent_channels;
            let guided = mix(&cond.narrow(axis, 0, c)?, &uncond.narrow(axis, 0, c)?)?;
            Tensor::cat(&[&guided, &cond.narrow(axis, c, channels - c)?], axis)?
        }
    })
}
