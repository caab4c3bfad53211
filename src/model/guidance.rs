//! Classifier-free guidance: how the conditional and unconditional halves of one model output are mixed.

use candle_core::Tensor;

use crate::error::{LatteError, Result};

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
/// Returns one half. A finite but huge scale can overflow the mix: that is an error naming the scale (every
/// guided path comes through here: `forward_with_cfg`, the sampling loops, the pipelines), never a NaN passed
/// on.
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
    let guided = match rule {
        GuidanceRule::AllChannels => mix(&cond, &uncond)?,
        GuidanceRule::PredictionChannels if channels == latent_channels => mix(&cond, &uncond)?,
        GuidanceRule::PredictionChannels => {
            let c = latent_channels;
            let guided = mix(&cond.narrow(axis, 0, c)?, &uncond.narrow(axis, 0, c)?)?;
            Tensor::cat(&[&guided, &cond.narrow(axis, c, channels - c)?], axis)?
        }
    };
    // (A non-finite model output is the model's overflow, reported where outputs are checked.)
    if !crate::finite::all_finite(&guided)? && crate::finite::all_finite(out)? {
        return Err(LatteError::Value(format!(
            "guidance_scale (cfg_scale): {scale} makes classifier-free guidance, uncond + scale · (cond − uncond), \
             overflow to NaN or infinity from finite model outputs; expected a scale of usual size (1 to about 20)"
        )));
    }
    Ok(guided)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Issue 30: a huge finite scale overflowed the mix into inf/NaN, returned silently by `forward_with_cfg`.
    #[test]
    fn a_scale_that_overflows_the_mix_is_an_error() {
        let out = Tensor::new(&[[1f32, 2.0], [0.5, 2.0]], &Device::Cpu).unwrap(); // [cond | uncond] halves
        let guided = apply_guidance(&out, 3.0, GuidanceRule::AllChannels, 1, 2).unwrap();
        assert_eq!(guided.to_vec2::<f32>().unwrap(), [[2.0, 2.0]]);
        for scale in [1e300, 1e39] {
            let e = apply_guidance(&out, scale, GuidanceRule::AllChannels, 1, 2)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("guidance_scale (cfg_scale)") && e.contains("NaN or infinity"),
                "{e}"
            );
        }
        assert!(apply_guidance(&out, 1e39, GuidanceRule::PredictionChannels, 1, 1).is_err());
        // A model output that is already non-finite is not blamed on the scale (outputs are checked as such).
        let nan = Tensor::new(&[[f32::NAN, 2.0], [0.5, 2.0]], &Device::Cpu).unwrap();
        assert!(apply_guidance(&nan, 3.0, GuidanceRule::AllChannels, 1, 2).is_ok());
    }
}
