//! The video VAE: diffusers' `AutoencoderKL` (the Stable Diffusion VAE Latte encodes frames with), applied frame by
//! frame, with diffusers' parameter names so a `vae/` folder loads as it is.
//!
//! candle-transformers has this network, but its `encode` returns a distribution whose mean is private and whose
//! `sample` draws from candle's unseeded CPU generator; Latte needs both the mean and reproducible samples, so the
//! network is written here (encoder, decoder, quant convs; ResNet blocks, single-head mid-block attention).

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::error::LatteError;
use crate::nn::conv::Conv2d;
use crate::nn::group_norm::GroupNorm;
use crate::rng::Generator;
use crate::weights::diffusers::{read_folder, DIFFUSERS_WEIGHTS};
use crate::weights::{LoadPolicy, ParamStore};

/// The fields of a diffusers `AutoencoderKL` `config.json` that shape the network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers")]
    pub layers_per_block: usize,
    #[serde(default = "default_latent")]
    pub latent_channels: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Refuses what the network cannot be built from: empty or zero sizes, groups that do not divide the
    /// channels, sizes no real VAE has (the bounds keep every product far from overflow).
    pub fn validate(&self) -> crate::Result<()> {
        let err = |m: String| Err(LatteError::Config(format!("VAE: {m}")));
        if self.block_out_channels.is_empty() || self.block_out_channels.len() > 16 {
            return err(format!(
                "block_out_channels: expected 1 to 16 entries, got {}",
                self.block_out_channels.len()
            ));
        }
        let mut fields = vec![
            ("in_channels", self.in_channels, 1, 1 << 10),
            ("out_channels", self.out_channels, 1, 1 << 10),
            ("layers_per_block", self.layers_per_block, 1, 64),
            ("latent_channels", self.latent_channels, 1, 1 << 10),
            ("norm_num_groups", self.norm_num_groups, 1, 1 << 12),
        ];
        fields.extend(
            self.block_out_channels
                .iter()
                .map(|&c| ("block_out_channels", c, 1, 1 << 14)),
        );
        crate::limits::sizes(&fields).map_err(|e| LatteError::Config(format!("VAE: {e}")))?;
        if let Some(c) = self.block_out_channels.iter().find(|c| **c % self.norm_num_groups != 0) {
            return err(format!(
                "block_out_channels {c} is not divisible by norm_num_groups {}",
                self.norm_num_groups
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return err(format!(
                "scaling_factor: expected a positive finite value, got {}",
                self.scaling_factor
            ));
        }
        Ok(())
    }
}

fn default_channels() -> usize {
    3
}
fn default_layers() -> usize {
    1
}
fn default_latent() -> usize {
    4
}
fn default_groups() -> usize {
    32
}
fn default_scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

const EPS: f64 = 1e-6;

// The layers read their parameters with `vb.get` (zeros in a fresh store, to be loaded into), not with
// candle-nn's builders, which would first fill every weight with a random initialisation.

fn conv(cin: usize, cout: usize, k: usize, stride: usize, padding: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(
        vb.get((cout, cin, k, k), "weight")?,
        vb.get(cout, "bias")?,
        stride,
        padding,
    )
}

fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(vb.get(channels, "weight")?, vb.get(channels, "bias")?, groups, eps)
}

fn linear(cin: usize, cout: usize, vb: VarBuilder) -> Result<Linear> {
    Ok(Linear::new(vb.get((cout, cin), "weight")?, Some(vb.get(cout, "bias")?)))
}

#[derive(Debug)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, EPS, vb.pp("norm1"))?,
            conv1: conv(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, EPS, vb.pp("norm2"))?,
            conv2: conv(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            shortcut: if cin != cout {
                Some(conv(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, true)?)?;
        let skip = match &self.shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(&self.norm2.forward(&h, true)?, &skip)
    }
}

/// Single-head self-attention over the pixels of the mid block (diffusers' `Attention` with a group norm).
#[derive(Debug)]
struct MidAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl MidAttention {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, c, EPS, vb.pp("group_norm"))?,
            q: linear(c, c, vb.pp("to_q"))?,
            k: linear(c, c, vb.pp("to_k"))?,
            v: linear(c, c, vb.pp("to_v"))?,
            out: linear(c, c, vb.pp("to_out").pp("0"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self
            .norm
            .forward(x, false)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k, v) = (self.q.forward(&t)?, self.k.forward(&t)?, self.v.forward(&t)?);
        let scores = (q.matmul(&k.t()?)? / (c as f64).sqrt())?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let o = self.out.forward(&probs.matmul(&v)?)?;
        x + o.transpose(1, 2)?.reshape((b, c, h, w))?
    }
}

#[derive(Debug)]
struct MidBlock {
    resnet0: ResnetBlock,
    attention: Option<MidAttention>,
    resnet1: ResnetBlock,
}

impl MidBlock {
    fn new(c: usize, cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(Self {
            resnet0: ResnetBlock::new(c, c, g, vb.pp("resnets").pp("0"))?,
            attention: if cfg.mid_block_add_attention {
                Some(MidAttention::new(c, g, vb.pp("attentions").pp("0"))?)
            } else {
                None
            },
            resnet1: ResnetBlock::new(c, c, g, vb.pp("resnets").pp("1"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnet0.forward(x)?;
        if let Some(a) = &self.attention {
            x = a.forward(&x)?;
        }
        self.resnet1.forward(&x)
    }
}

#[derive(Debug)]
struct Stage {
    resnets: Vec<ResnetBlock>,
    /// Downsample (encoder: pad right/bottom by 1, 3×3 stride 2) or upsample (decoder: nearest ×2, 3×3).
    resample: Option<Conv2d>,
}

#[derive(Debug)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<Stage>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let mut down = Vec::new();
        for (i, &cout) in ch.iter().enumerate() {
            let vb_i = vb.pp("down_blocks").pp(i);
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ResnetBlock::new(if j == 0 { cin } else { cout }, cout, g, vb_i.pp("resnets").pp(j)))
                .collect::<Result<_>>()?;
            let resample = if i + 1 < ch.len() {
                Some(conv(cout, cout, 3, 2, 0, vb_i.pp("downsamplers").pp("0").pp("conv"))?)
            } else {
                None
            };
            down.push(Stage { resnets, resample });
        }
        let last = *ch.last().expect("validated non-empty");
        Ok(Self {
            conv_in: conv(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?,
            down,
            mid: MidBlock::new(last, cfg, vb.pp("mid_block"))?,
            norm_out: group_norm(g, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(last, 2 * cfg.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for stage in &self.down {
            for r in &stage.resnets {
                x = r.forward(&x)?;
            }
            if let Some(c) = &stage.resample {
                x = c.forward(&x.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?)?;
            }
        }
        let x = self.mid.forward(&x)?;
        self.conv_out.forward(&self.norm_out.forward(&x, true)?)
    }
}

#[derive(Debug)]
struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<Stage>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up = Vec::new();
        for (i, &cout) in rev.iter().enumerate() {
            let vb_i = vb.pp("up_blocks").pp(i);
            let cin = if i == 0 { rev[0] } else { rev[i - 1] };
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| ResnetBlock::new(if j == 0 { cin } else { cout }, cout, g, vb_i.pp("resnets").pp(j)))
                .collect::<Result<_>>()?;
            let resample = if i + 1 < rev.len() {
                Some(conv(cout, cout, 3, 1, 1, vb_i.pp("upsamplers").pp("0").pp("conv"))?)
            } else {
                None
            };
            up.push(Stage { resnets, resample });
        }
        let first = *cfg.block_out_channels.first().expect("validated non-empty");
        Ok(Self {
            conv_in: conv(cfg.latent_channels, rev[0], 3, 1, 1, vb.pp("conv_in"))?,
            mid: MidBlock::new(rev[0], cfg, vb.pp("mid_block"))?,
            up,
            norm_out: group_norm(g, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv(first, cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut x = self.mid.forward(&self.conv_in.forward(z)?)?;
        for stage in &self.up {
            for r in &stage.resnets {
                x = r.forward(&x)?;
            }
            if let Some(c) = &stage.resample {
                x = c.forward_upsampled(&x, 2)?;
            }
        }
        self.conv_out.forward(&self.norm_out.forward(&x, true)?)
    }
}

/// diffusers' `AutoencoderKL` on images (B, C, H, W).
#[derive(Debug)]
pub struct AutoencoderKl {
    cfg: VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
    device: Device,
}

impl AutoencoderKl {
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> crate::Result<Self> {
        cfg.validate()?;
        let l = cfg.latent_channels;
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
            quant_conv: if cfg.use_quant_conv {
                Some(conv(2 * l, 2 * l, 1, 1, 0, vb.pp("quant_conv"))?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(conv(l, l, 1, 1, 0, vb.pp("post_quant_conv"))?)
            } else {
                None
            },
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    /// Reads a diffusers `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors` (or its shards).
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: DType) -> crate::Result<Self> {
        let folder = read_folder::<VaeConfig>(dir, "a diffusers vae/ folder", DIFFUSERS_WEIGHTS)?;
        let store = ParamStore::new(device, dtype)?;
        let vae = store.build(true, |vb| Self::new(&folder.config, vb))?;
        store.load(
            &folder.tensors,
            LoadPolicy::STRICT,
            Some(&folder.source),
            "AutoencoderKL config",
        )?;
        Ok(vae)
    }

    pub fn config(&self) -> &VaeConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Refuses frames (N, C, H, W) the network cannot take (`arg` names them): the wrong channel count, a side
    /// smaller than 2^(number of downsamplings) (each downsampling pads by one and convolves 3×3 with stride 2, so
    /// a side of 1 has no window left), or a pass larger than the memory available (see
    /// [`AutoencoderKl::peak_elements`]; `decode` for the decoder on latents).
    fn check_frames(&self, x: &Tensor, arg: &str, channels: usize, min_side: usize, decode: bool) -> crate::Result<()> {
        let dims = x.dims();
        let ok = dims.len() == 4 && dims[1] == channels && dims[2] >= min_side && dims[3] >= min_side;
        if !ok {
            return Err(crate::error::value_error(
                arg,
                format!("shape (N, {channels}, H, W) with H, W >= {min_side}"),
                format!("{dims:?}"),
            ));
        }
        if !crate::finite::all_finite(x)? {
            return Err(crate::error::value_error(arg, "finite values", "NaN or infinity"));
        }
        let scale = if decode { self.min_frame_side() } else { 1 };
        crate::limits::elements(
            arg,
            &[
                dims[0],
                dims[1],
                dims[2].saturating_mul(scale),
                dims[3].saturating_mul(scale),
            ],
        )?;
        let peak = self.peak_elements(dims[0], (dims[2], dims[3]), decode);
        crate::limits::ensure_fits(
            peak.saturating_mul(self.dtype.size_in_bytes().max(4) as u128),
            &format!("the VAE on {arg} of shape {dims:?}"),
        )
    }

    /// A lower bound of the values the encoder (or with `decode`, the decoder) holds at its peak on `batch`
    /// inputs of `side` (H, W): the largest of, for each level's 3×3 convolutions, a few activations of its width
    /// at its resolution plus the patch rows the convolution gathers ([`crate::nn::conv::scratch_elements`]),
    /// and for the mid block's single-head attention over every position of the lowest level, its scores and
    /// probabilities ((H·W)² per image at that level, however unequal H and W).
    fn peak_elements(&self, batch: usize, (h, w): (usize, usize), decode: bool) -> u128 {
        let ch = &self.cfg.block_out_channels;
        let levels = ch.len();
        // (channels, height, width) of each level, from full resolution down (the encoder halves each side per
        // downsampling; the decoder starts at the latents' size and doubles it).
        let at = |i: usize| -> (usize, usize, usize) {
            if decode {
                let up = levels - 1 - i;
                (ch[i], h.saturating_mul(1 << up), w.saturating_mul(1 << up))
            } else {
                (ch[i], h >> i, w >> i)
            }
        };
        let values = |c: usize, h: usize, w: usize| {
            [c, h, w]
                .iter()
                .fold(batch as u128, |a, &d| a.saturating_mul(d as u128))
        };
        let conv = |c: usize, h: usize, w: usize| {
            // Input, normalised input, output and skip of a ResNet block's convolution.
            let live = values(c, h, w).saturating_mul(4);
            live.saturating_add(crate::nn::conv::scratch_elements(
                &self.device,
                self.dtype,
                batch,
                c,
                3,
                (h, w),
            ))
        };
        let convs = (0..levels)
            .map(|i| {
                let (c, h, w) = at(i);
                // A resampling convolution reads a neighbouring level's width at this resolution.
                let wider = ch[i.saturating_sub(1)].max(ch[(i + 1).min(levels - 1)]).max(c);
                conv(wider, h, w)
            })
            .fold(0, u128::max);
        let (c, lh, lw) = at(levels - 1);
        let positions = (lh as u128).saturating_mul(lw as u128);
        let attention = if self.cfg.mid_block_add_attention {
            // q, k, v and the output, then the scores and the probabilities.
            values(c, lh, lw).saturating_mul(4).saturating_add(
                (batch as u128)
                    .saturating_mul(positions)
                    .saturating_mul(positions)
                    .saturating_mul(2),
            )
        } else {
            0
        };
        convs.max(attention)
    }

    /// The smallest frame side the encoder takes: 2^(number of downsamplings).
    pub fn min_frame_side(&self) -> usize {
        1 << (self.cfg.block_out_channels.len() - 1)
    }

    /// The latent distribution's mean and log-variance (clamped to [-30, 20] as diffusers) of images in [-1, 1].
    pub fn encode_moments(&self, x: &Tensor) -> crate::Result<(Tensor, Tensor)> {
        self.check_frames(x, "frames", self.cfg.in_channels, self.min_frame_side(), false)?;
        let h = self.encoder.forward(x)?;
        let moments = match &self.quant_conv {
            Some(c) => c.forward(&h)?,
            None => h,
        };
        let l = self.cfg.latent_channels;
        let mean = moments.narrow(1, 0, l)?;
        let logvar = moments.narrow(1, l, l)?.clamp(-30.0, 20.0)?;
        crate::finite::check_output(&mean)?;
        Ok((mean, logvar))
    }

    /// Images from (unscaled) latents.
    pub fn decode(&self, z: &Tensor) -> crate::Result<Tensor> {
        self.check_frames(z, "latents", self.cfg.latent_channels, 1, true)?;
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        let out = self.decoder.forward(&z)?;
        crate::finite::check_output(&out)?;
        Ok(out)
    }

    /// Latents of images: the mean, or a sample mean + σ·ε with ε from `rng`; times `scaling_factor`.
    pub fn encode(&self, x: &Tensor, rng: Option<&mut Generator>) -> crate::Result<Tensor> {
        let (mean, logvar) = self.encode_moments(x)?;
        let z = match rng {
            None => mean,
            Some(rng) => {
                let eps = rng.randn(mean.dims(), mean.dtype(), mean.device())?;
                (&mean + (logvar * 0.5)?.exp()?.mul(&eps)?)?
            }
        };
        Ok((z * self.cfg.scaling_factor)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> AutoencoderKl {
        let cfg = VaeConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![8, 16],
            layers_per_block: 1,
            latent_channels: 4,
            norm_num_groups: 4,
            scaling_factor: 0.18215,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        };
        let store = ParamStore::new(&Device::Cpu, DType::F32).unwrap();
        store.build(true, |vb| AutoencoderKl::new(&cfg, vb)).unwrap()
    }

    /// Issue 30: the estimate counted the widest activation only, so wide frames asked for the mid block's
    /// (H·W)² attention scores (hundreds of GB) unseen.
    #[test]
    fn the_attention_and_convolutions_of_wide_frames_are_estimated() {
        let vae = tiny();
        // Latents 2 × 2^17: the mid block attends over 2^18 positions, 2^36 scores and as many probabilities.
        assert!(vae.peak_elements(1, (2, 1 << 17), true) >= 2 << 36);
        let z = Tensor::zeros((1, 4, 2, 1 << 17), DType::F32, &Device::Cpu).unwrap();
        let e = vae.decode(&z).unwrap_err();
        assert!(matches!(e, LatteError::Memory(_)), "{e}");
        assert!(
            e.to_string()
                .contains("the VAE on latents of shape [1, 4, 2, 131072] needs about"),
            "{e}"
        );
        // Frames 4 × 2^18 for the encoder: halved once, the same 2^18 positions.
        assert!(vae.peak_elements(1, (4, 1 << 18), false) >= 2 << 36);
        // Small frames fit, and the estimate grows with the convolutions' widths at each level.
        let x = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(vae.encode_moments(&x).is_ok());
        assert!(vae.peak_elements(1, (16, 16), false) >= 4 * 16 * 16 * 16);
    }
}
