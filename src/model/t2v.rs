//! The text-to-video Latte transformer of Latte-1, as diffusers' `LatteTransformer3DModel`, with diffusers'
//! parameter names and `config.json` keys, so a diffusers `transformer/` folder loads as it is.
//!
//! Per layer, a spatial block (self-attention over the patches of each frame, cross-attention to the projected
//! caption, feed-forward) then a temporal block (self-attention over the frames at each patch position,
//! feed-forward), both PixArt-style adaLN-single: one timestep embedding → 6·D modulation shared by every block,
//! plus each block's learned `scale_shift_table` (6, D). The caption's 4096-d T5 features are projected to D
//! (`caption_projection`). Positions: 2D sin-cos per frame (diffusers' `get_2d_sincos_pos_embed`, rescaled to
//! the base grid), and a 1D sin-cos table over `video_length` frames added before the first temporal block.
//! Input and output are `(B, C, F, H, W)`, as in diffusers.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{value_error, LatteError, Result};
use crate::nn::attention::{scaled_dot_product, AttentionKernel};
use crate::nn::pos::{sincos_1d, timestep_features};
use crate::nn::{gelu::gelu, LayerNorm, Linear};

/// diffusers' `LatteTransformer3DModel` config (the keys of its `config.json`; others are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatteT2VConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub cross_attention_dim: Option<usize>,
    pub attention_bias: bool,
    pub sample_size: usize,
    pub patch_size: usize,
    pub activation_fn: String,
    pub num_embeds_ada_norm: Option<usize>,
    pub norm_type: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub caption_channels: usize,
    pub video_length: usize,
}

impl Default for LatteT2VConfig {
    /// Latte-1 (`maxin-cn/Latte-1`'s `transformer/config.json`).
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: Some(8),
            num_layers: 28,
            cross_attention_dim: Some(1152),
            attention_bias: true,
            sample_size: 64,
            patch_size: 2,
            activation_fn: "gelu-approximate".into(),
            num_embeds_ada_norm: Some(1000),
            norm_type: "ada_norm_single".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: 4096,
            video_length: 16,
        }
    }
}

impl LatteT2VConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Parses a diffusers `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(LatteError::Config(m));
        if self.norm_type != "ada_norm_single" {
            return err(format!(
                "norm_type {:?}: only \"ada_norm_single\" (Latte-1's adaLN-single) is supported",
                self.norm_type
            ));
        }
        if !matches!(self.activation_fn.as_str(), "gelu" | "gelu-approximate" | "geglu") {
            return err(format!(
                "activation_fn {:?}: expected \"gelu\", \"gelu-approximate\" or \"geglu\"",
                self.activation_fn
            ));
        }
        for (name, v) in [
            ("num_attention_heads", self.num_attention_heads),
            ("attention_head_dim", self.attention_head_dim),
            ("in_channels", self.in_channels),
            ("num_layers", self.num_layers),
            ("patch_size", self.patch_size),
            ("sample_size", self.sample_size),
            ("caption_channels", self.caption_channels),
            ("video_length", self.video_length),
        ] {
            if v == 0 {
                return err(format!("{name}: expected a positive value"));
            }
        }
        if self.inner_dim() % 2 != 0 {
            return err(format!("inner dim {} must be even (sin-cos tables)", self.inner_dim()));
        }
        if let Some(c) = self.cross_attention_dim {
            if c != self.inner_dim() {
                return err(format!(
                    "cross_attention_dim {c} must equal num_attention_heads × attention_head_dim = {} (the caption \
                     is projected to that width)",
                    self.inner_dim()
                ));
            }
        }
        Ok(())
    }
}

/// diffusers' `Attention` (to_q, to_k, to_v, to_out.0), self- or cross-attention.
struct Attn {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attn {
    fn new(cfg: &LatteT2VConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.inner_dim();
        let b = cfg.attention_bias;
        Ok(Self {
            to_q: Linear::new(d, d, b, vb.pp("to_q"))?,
            to_k: Linear::new(d, d, b, vb.pp("to_k"))?,
            to_v: Linear::new(d, d, b, vb.pp("to_v"))?,
            to_out: Linear::new(d, d, true, vb.pp("to_out").pp("0"))?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>, grad: bool) -> candle_core::Result<Tensor> {
        let ctx = context.unwrap_or(x);
        let (g, lq, d) = x.dims3()?;
        let lk = ctx.dim(1)?;
        let hd = d / self.heads;
        let split = |t: Tensor, l: usize| t.reshape((g, l, self.heads, hd))?.transpose(1, 2);
        let q = split(self.to_q.forward(x)?, lq)?;
        let k = split(self.to_k.forward(ctx)?, lk)?;
        let v = split(self.to_v.forward(ctx)?, lk)?;
        let out = scaled_dot_product(&q, &k, &v, AttentionKernel::Math, grad)?
            .contiguous()?
            .reshape((g, lq, d))?;
        self.to_out.forward(&out)
    }
}

/// diffusers' `FeedForward`: `net.0` (GELU / tanh-GELU projection, or GEGLU), `net.2`.
struct FeedForward {
    proj: Linear,
    out: Linear,
    kind: Activation,
}

#[derive(Clone, Copy)]
enum Activation {
    Gelu,
    GeluTanh,
    Geglu,
}

fn gelu_exact(x: &Tensor) -> candle_core::Result<Tensor> {
    x.gelu_erf()
}

impl FeedForward {
    fn new(cfg: &LatteT2VConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.inner_dim();
        let inner = 4 * d;
        let kind = match cfg.activation_fn.as_str() {
            "gelu" => Activation::Gelu,
            "geglu" => Activation::Geglu,
            _ => Activation::GeluTanh,
        };
        let proj_out = if matches!(kind, Activation::Geglu) {
            2 * inner
        } else {
            inner
        };
        Ok(Self {
            proj: Linear::new(d, proj_out, true, vb.pp("net").pp("0").pp("proj"))?,
            out: Linear::new(inner, d, true, vb.pp("net").pp("2"))?,
            kind,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.proj.forward(x)?;
        let h = match self.kind {
            Activation::Gelu => gelu_exact(&h)?,
            Activation::GeluTanh => gelu(&h)?,
            Activation::Geglu => {
                let half = h.dim(D::Minus1)? / 2;
                let (hidden, gate) = (h.narrow(D::Minus1, 0, half)?, h.narrow(D::Minus1, half, half)?);
                (hidden * gelu_exact(&gate)?)?
            }
        };
        self.out.forward(&h)
    }
}

/// `BasicTransformerBlock` with `norm_type="ada_norm_single"`.
struct Block {
    norm1: LayerNorm,
    attn1: Attn,
    attn2: Option<Attn>,
    norm2: LayerNorm,
    ff: FeedForward,
    scale_shift_table: Tensor,
}

fn norm(cfg: &LatteT2VConfig, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    if cfg.norm_elementwise_affine {
        LayerNorm::affine(cfg.inner_dim(), cfg.norm_eps, vb)
    } else {
        Ok(LayerNorm::plain(cfg.norm_eps))
    }
}

impl Block {
    fn new(cfg: &LatteT2VConfig, cross: bool, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: norm(cfg, vb.pp("norm1"))?,
            attn1: Attn::new(cfg, vb.pp("attn1"))?,
            attn2: if cross {
                Some(Attn::new(cfg, vb.pp("attn2"))?)
            } else {
                None
            },
            norm2: norm(cfg, vb.pp("norm2"))?,
            ff: FeedForward::new(cfg, vb.pp("ff"))?,
            scale_shift_table: vb.get((6, cfg.inner_dim()), "scale_shift_table")?,
        })
    }

    /// x: (G, L, D); t6: (G, 6·D) adaLN-single modulation; context: (G, S, D) projected caption.
    fn forward(&self, x: &Tensor, t6: &Tensor, context: Option<&Tensor>, grad: bool) -> candle_core::Result<Tensor> {
        let (g, _, d) = x.dims3()?;
        let mods = self
            .scale_shift_table
            .unsqueeze(0)?
            .broadcast_add(&t6.reshape((g, 6, d))?)?;
        let m = |i: usize| mods.narrow(1, i, 1);
        let (shift_msa, scale_msa, gate_msa) = (m(0)?, m(1)?, m(2)?);
        let (shift_mlp, scale_mlp, gate_mlp) = (m(3)?, m(4)?, m(5)?);
        let h = self.norm1.forward(x, grad)?;
        let h = h.broadcast_mul(&(scale_msa + 1.0)?)?.broadcast_add(&shift_msa)?;
        let x = (x + self.attn1.forward(&h, None, grad)?.broadcast_mul(&gate_msa)?)?;
        // PixArt: no normalisation before the cross-attention.
        let x = match (&self.attn2, context) {
            (Some(attn), Some(ctx)) => (&x + attn.forward(&x, Some(ctx), grad)?)?,
            _ => x,
        };
        let h = self.norm2.forward(&x, grad)?;
        let h = h.broadcast_mul(&(scale_mlp + 1.0)?)?.broadcast_add(&shift_mlp)?;
        &x + self.ff.forward(&h)?.broadcast_mul(&gate_mlp)?
    }
}

/// The network (parameters under diffusers' names).
pub struct LatteT2V {
    cfg: LatteT2VConfig,
    patch_proj: Linear,
    t_linear_1: Linear,
    t_linear_2: Linear,
    adaln_linear: Linear,
    caption_1: Linear,
    caption_2: Linear,
    spatial: Vec<Block>,
    temporal: Vec<Block>,
    scale_shift_table: Tensor,
    proj_out: Linear,
    /// The fixed 1D sin-cos table (1, video_length, D) in f32, added before the first temporal block.
    temp_pos: Tensor,
}

impl LatteT2V {
    pub fn new(cfg: &LatteT2VConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.inner_dim();
        let p = cfg.patch_size;
        let pe = vb.pp("pos_embed").pp("proj");
        // The patch convolution as a matrix over flattened (C, p, p) patches: the Conv2d weight reshaped.
        let conv_w = pe.get((d, cfg.in_channels, p, p), "weight")?;
        let conv_b = pe.get(d, "bias")?;
        let patch_proj = Linear::from_parts(conv_w.reshape((d, cfg.in_channels * p * p))?, Some(conv_b));
        let ts = vb.pp("adaln_single").pp("emb").pp("timestep_embedder");
        let cross = cfg.cross_attention_dim.is_some();
        Ok(Self {
            cfg: cfg.clone(),
            patch_proj,
            t_linear_1: Linear::new(256, d, true, ts.pp("linear_1"))?,
            t_linear_2: Linear::new(d, d, true, ts.pp("linear_2"))?,
            adaln_linear: Linear::new(d, 6 * d, true, vb.pp("adaln_single").pp("linear"))?,
            caption_1: Linear::new(
                cfg.caption_channels,
                d,
                true,
                vb.pp("caption_projection").pp("linear_1"),
            )?,
            caption_2: Linear::new(d, d, true, vb.pp("caption_projection").pp("linear_2"))?,
            spatial: (0..cfg.num_layers)
                .map(|i| Block::new(cfg, cross, vb.pp("transformer_blocks").pp(i.to_string())))
                .collect::<candle_core::Result<_>>()?,
            temporal: (0..cfg.num_layers)
                .map(|i| Block::new(cfg, false, vb.pp("temporal_transformer_blocks").pp(i.to_string())))
                .collect::<candle_core::Result<_>>()?,
            scale_shift_table: vb.get((2, d), "scale_shift_table")?,
            proj_out: Linear::new(d, p * p * cfg.out_channels(), true, vb.pp("proj_out"))?,
            temp_pos: {
                let positions: Vec<f64> = (0..cfg.video_length).map(|k| k as f64).collect();
                Tensor::from_vec(sincos_1d(d, &positions), (1, cfg.video_length, d), vb.device())?
                    .to_dtype(DType::F32)?
            },
        })
    }

    /// diffusers' `get_2d_sincos_pos_embed` for an (h, w) patch grid: coordinates `i / (n / base) / scale` in
    /// f32, base = sample_size / patch_size, scale = max(sample_size / 64, 1); the first half encodes columns.
    fn pos_embed_2d(&self, h: usize, w: usize) -> Vec<f64> {
        let d = self.cfg.inner_dim();
        let base = (self.cfg.sample_size / self.cfg.patch_size) as f32;
        let interp = ((self.cfg.sample_size / 64).max(1)) as f32;
        let coord = |i: usize, n: usize| (i as f32 / (n as f32 / base) / interp) as f64;
        let cols: Vec<f64> = (0..h * w).map(|k| coord(k % w, w)).collect();
        let rows: Vec<f64> = (0..h * w).map(|k| coord(k / w, h)).collect();
        let (a, b) = (sincos_1d(d / 2, &cols), sincos_1d(d / 2, &rows));
        let half = d / 2;
        (0..h * w)
            .flat_map(|k| {
                a[k * half..(k + 1) * half]
                    .iter()
                    .chain(&b[k * half..(k + 1) * half])
                    .copied()
            })
            .collect()
    }

    /// x: (B, C, F, H, W) latents; t: (B,) timesteps; caption: (B, S, caption_channels) T5 features.
    /// Returns (B, out_channels, F, H, W).
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        caption: &Tensor,
        temporal: bool,
        grad: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, c, f, hh, ww) = x.dims5()?;
        let (p, d) = (self.cfg.patch_size, self.cfg.inner_dim());
        let (h, w) = (hh / p, ww / p);
        let l = h * w;
        let (dtype, dev) = (x.dtype(), x.device());
        // Patches of every frame: (B·F, L, C·p·p) in (c, i, j) order, as the convolution weight.
        let frames = x
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((b * f, c, h, p, w, p))?;
        let patches = frames
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * f, l, c * p * p))?;
        let pos = Tensor::from_vec(self.pos_embed_2d(h, w), (1, l, d), dev)?
            .to_dtype(DType::F32)?
            .to_dtype(dtype)?;
        let mut hs = self.patch_proj.forward(&patches)?.broadcast_add(&pos)?;

        let emb = self.t_linear_2.forward(
            &self
                .t_linear_1
                .forward(&timestep_features(t, 256)?.to_dtype(dtype)?)?
                .silu()?,
        )?;
        let t6 = self.adaln_linear.forward(&emb.silu()?)?; // (B, 6D)
        let repeat = |x: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            // repeat_interleave along dim 0
            let mut dims = x.dims().to_vec();
            let mut expanded = vec![dims[0], n];
            expanded.extend_from_slice(&dims[1..]);
            let y = x.unsqueeze(1)?.broadcast_as(expanded)?;
            dims[0] *= n;
            y.contiguous()?.reshape(dims)
        };
        let ctx = self.caption_2.forward(&gelu(&self.caption_1.forward(caption)?)?)?;
        let ctx = repeat(&ctx, f)?;
        let t_spatial = repeat(&t6, f)?;
        let t_temporal = repeat(&t6, l)?;
        for (i, (sb, tb)) in self.spatial.iter().zip(&self.temporal).enumerate() {
            hs = sb.forward(&hs, &t_spatial, Some(&ctx), grad)?;
            if temporal {
                // (B·F, L, D) → (B·L, F, D)
                let mut ht = hs
                    .reshape((b, f, l, d))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b * l, f, d))?;
                if i == 0 && f > 1 {
                    let te = self.temp_pos.to_dtype(dtype)?;
                    ht = ht.broadcast_add(&te)?;
                }
                ht = tb.forward(&ht, &t_temporal, None, grad)?;
                hs = ht
                    .reshape((b, l, f, d))?
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((b * f, l, d))?;
            }
        }
        let emb_f = repeat(&emb, f)?.unsqueeze(1)?; // (B·F, 1, D)
        let table = self.scale_shift_table.unsqueeze(0)?;
        let shift = table.narrow(1, 0, 1)?.broadcast_add(&emb_f)?;
        let scale = table.narrow(1, 1, 1)?.broadcast_add(&emb_f)?;
        let normed = LayerNorm::plain(1e-6).forward(&hs, grad)?;
        let hs = normed.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?;
        let out = self.proj_out.forward(&hs)?; // (B·F, L, p·p·c_out)
        let co = self.cfg.out_channels();
        let out = out
            .reshape((b * f, h, w, p, p, co))?
            .permute((0, 5, 1, 3, 2, 4))?
            .contiguous()?;
        let out = out.reshape((b, f, co, h * p, w * p))?.permute((0, 2, 1, 3, 4))?;
        out.contiguous()
    }
}

/// A text-to-video Latte transformer with its parameters.
#[derive(Clone)]
pub struct LatteT2VModel {
    cfg: LatteT2VConfig,
    varmap: VarMap,
    model: std::sync::Arc<LatteT2V>,
    device: Device,
}

impl LatteT2VModel {
    /// The model with every parameter zero (to be loaded into).
    pub fn uninitialised(cfg: &LatteT2VConfig, device: &Device, dtype: DType) -> Result<Self> {
        crate::configure_allocator();
        cfg.validate()?;
        super::check_float_dtype(dtype)?;
        let varmap = VarMap::new();
        let model = LatteT2V::new(cfg, VarBuilder::from_varmap(&varmap, dtype, device))?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            model: std::sync::Arc::new(model),
            device: device.clone(),
        })
    }

    /// A randomly initialised model: every parameter N(0, 0.02²) from `seed` (for tests and demos; not a
    /// training recipe).
    pub fn new(cfg: &LatteT2VConfig, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        let me = Self::uninitialised(cfg, device, dtype)?;
        let mut rng = crate::rng::Generator::new(seed);
        let data = me
            .varmap
            .data()
            .lock()
            .map_err(|_| LatteError::StateDict("lock poisoned".into()))?;
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let var = &data[name];
            let noise = rng.randn(var.dims(), var.dtype(), &Device::Cpu)?;
            var.set(&(noise * 0.02)?.to_device(device)?)?;
        }
        drop(data);
        Ok(me)
    }

    pub fn config(&self) -> &LatteT2VConfig {
        &self.cfg
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    pub fn dtype(&self) -> DType {
        self.varmap.all_vars().first().map(|v| v.dtype()).unwrap_or(DType::F32)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn num_parameters(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// Every parameter by its diffusers name.
    pub fn state_dict(&self) -> std::collections::BTreeMap<String, Tensor> {
        let data = self
            .varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        data.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect()
    }

    /// Loads parameters by name, strictly: every missing, unexpected or mis-shaped key is listed; `source`
    /// names the file in the message.
    pub fn load_state_dict(&self, state: &HashMap<String, Tensor>, source: &str) -> Result<()> {
        super::load_vars_strict(
            &self.varmap,
            state,
            &self.device,
            source,
            "LatteTransformer3DModel",
            false,
        )
    }

    /// Loads a diffusers `transformer/` folder: `config.json` and `diffusion_pytorch_model.safetensors`, or its
    /// shards listed in `diffusion_pytorch_model.safetensors.index.json`.
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        if !dir.is_dir() {
            return Err(LatteError::NotFound(format!(
                "{} (expected a diffusers transformer/ folder)",
                dir.display()
            )));
        }
        let config_path = dir.join("config.json");
        let text = crate::io::read(&config_path)?;
        let text = String::from_utf8(text).map_err(|_| value_error("config.json", "UTF-8 JSON", "binary data"))?;
        let cfg = LatteT2VConfig::from_json(&text)
            .map_err(|e| LatteError::Config(format!("{}: {e}", config_path.display())))?;
        let (state, source) = read_diffusers_weights(dir, "diffusion_pytorch_model")?;
        let dtype = dtype.unwrap_or_else(|| state.values().next().map_or(DType::F32, |t| t.dtype()));
        let model = Self::uninitialised(&cfg, device, dtype)?;
        model.load_state_dict(&state, &source)?;
        Ok(model)
    }

    /// Checks inputs, then runs the network without gradients. x: (B, C, F, H, W); t: (B,) or a scalar;
    /// caption: (B, S, caption_channels).
    pub fn forward(&self, x: &Tensor, t: &Tensor, caption: &Tensor, temporal: bool) -> Result<Tensor> {
        let (x, t, caption) = self.prepare(x, t, caption)?;
        Ok(self.model.forward(&x, &t, &caption, temporal, false)?)
    }

    /// The same with the autograd graph kept (for gradient checks and fine-tuning).
    pub fn forward_train(&self, x: &Tensor, t: &Tensor, caption: &Tensor, temporal: bool) -> Result<Tensor> {
        let (x, t, caption) = self.prepare(x, t, caption)?;
        Ok(self.model.forward(&x, &t, &caption, temporal, true)?)
    }

    fn prepare(&self, x: &Tensor, t: &Tensor, caption: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let dims = x.dims();
        let p = cfg.patch_size;
        if dims.len() != 5 || dims[1] != cfg.in_channels || dims[3] % p != 0 || dims[4] % p != 0 || dims.contains(&0) {
            return Err(value_error(
                "hidden_states",
                format!("shape (B, {}, F, H, W) with H, W multiples of {p}", cfg.in_channels),
                format!("{dims:?}"),
            ));
        }
        let (b, f) = (dims[0], dims[2]);
        if f != 1 && f != cfg.video_length {
            return Err(value_error(
                "hidden_states",
                format!("{} frames (video_length) or 1", cfg.video_length),
                format!("{f} frames"),
            ));
        }
        let t = match t.dims() {
            [] => t.broadcast_as(b)?.contiguous()?,
            [1] => t.broadcast_as(b)?.contiguous()?,
            [n] if *n == b => t.clone(),
            _ => {
                return Err(value_error(
                    "timestep",
                    format!("a scalar or shape ({b},)"),
                    format!("{:?}", t.dims()),
                ))
            }
        };
        let cd = caption.dims();
        if cd.len() != 3 || cd[0] != b || cd[2] != cfg.caption_channels || cd[1] == 0 {
            return Err(value_error(
                "encoder_hidden_states",
                format!("shape ({b}, S, {})", cfg.caption_channels),
                format!("{cd:?}"),
            ));
        }
        let dtype = self.dtype();
        let on = |t: &Tensor| -> Result<Tensor> { Ok(t.to_device(&self.device)?.to_dtype(dtype)?) };
        Ok((on(x)?, t.to_device(&self.device)?.to_dtype(DType::F32)?, on(caption)?))
    }
}

/// Reads `<stem>.safetensors`, or the shards listed in `<stem>.safetensors.index.json`, from a diffusers folder.
/// Returns the tensors and a description of the files for error messages.
pub fn read_diffusers_weights(dir: &Path, stem: &str) -> Result<(HashMap<String, Tensor>, String)> {
    let single = dir.join(format!("{stem}.safetensors"));
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if single.is_file() {
        let tensors = candle_core::safetensors::load(&single, &Device::Cpu)
            .map_err(|e| LatteError::Value(format!("{}: {e}", single.display())))?;
        return Ok((tensors, single.display().to_string()));
    }
    if !index.is_file() {
        return Err(LatteError::NotFound(format!(
            "{} (nor {}); a diffusers folder holds one or the other",
            single.display(),
            index.display()
        )));
    }
    let text = crate::io::read(&index)?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| LatteError::Value(format!("{}: not JSON ({e})", index.display())))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| LatteError::Value(format!("{}: no \"weight_map\" object", index.display())))?;
    let mut by_file: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (key, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| LatteError::Value(format!("{}: weight_map[{key:?}] is not a file name", index.display())))?;
        by_file.entry(file.to_string()).or_default().push(key.clone());
    }
    let mut tensors = HashMap::new();
    for (file, keys) in by_file {
        let path = dir.join(&file);
        if !path.is_file() {
            return Err(LatteError::NotFound(format!(
                "{} (a shard listed in {} for {} keys, e.g. {:?})",
                path.display(),
                index.display(),
                keys.len(),
                keys[0]
            )));
        }
        let shard = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| LatteError::Value(format!("{}: {e}", path.display())))?;
        for key in keys {
            let t = shard.get(&key).ok_or_else(|| {
                LatteError::StateDict(format!(
                    "{}: tensor {key:?} is listed in {} but not in the shard",
                    path.display(),
                    index.display()
                ))
            })?;
            tensors.insert(key, t.clone());
        }
    }
    Ok((tensors, format!("{} and its shards", index.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Generator;

    fn tiny(activation: &str, affine: bool) -> LatteT2VConfig {
        LatteT2VConfig {
            num_attention_heads: 2,
            attention_head_dim: 4,
            in_channels: 3,
            out_channels: Some(6),
            num_layers: 2,
            cross_attention_dim: Some(8),
            sample_size: 4,
            patch_size: 2,
            activation_fn: activation.into(),
            norm_elementwise_affine: affine,
            caption_channels: 5,
            video_length: 3,
            ..LatteT2VConfig::default()
        }
    }

    struct Batch {
        x: Tensor,
        t: Tensor,
        caption: Tensor,
        weights: Tensor,
    }

    fn batch(dtype: DType) -> Batch {
        let mut rng = Generator::new(9);
        let dev = Device::Cpu;
        Batch {
            x: rng.randn(&[2, 3, 3, 4, 6], dtype, &dev).unwrap(),
            t: Tensor::new(&[3f32, 700.0], &dev).unwrap(),
            caption: rng.randn(&[2, 4, 5], dtype, &dev).unwrap(),
            weights: rng.randn(&[2, 6, 3, 4, 6], dtype, &dev).unwrap(),
        }
    }

    fn loss(model: &LatteT2VModel, b: &Batch) -> Tensor {
        let out = model.forward_train(&b.x, &b.t, &b.caption, true).unwrap();
        (out * &b.weights).unwrap().sum_all().unwrap()
    }

    /// Random weights of a larger scale than `new`'s, so no path is negligible.
    fn perturbed(cfg: &LatteT2VConfig, dtype: DType) -> LatteT2VModel {
        let model = LatteT2VModel::new(cfg, &Device::Cpu, dtype, 1).unwrap();
        for (k, v) in model.state_dict() {
            let var = model.varmap.data().lock().unwrap()[&k].clone();
            var.set(&(v * 10.0).unwrap()).unwrap();
        }
        model
    }

    #[test]
    fn every_parameter_receives_a_gradient() {
        for (act, affine) in [("gelu-approximate", false), ("geglu", true), ("gelu", true)] {
            let cfg = tiny(act, affine);
            let model = perturbed(&cfg, DType::F32);
            let grads = loss(&model, &batch(DType::F32)).backward().unwrap();
            for (name, var) in model.varmap.data().lock().unwrap().iter() {
                let g = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no gradient ({act})"));
                let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm} ({act})");
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences_in_f64() {
        for (act, affine) in [("gelu-approximate", false), ("geglu", true), ("gelu", true)] {
            let cfg = tiny(act, affine);
            let model = perturbed(&cfg, DType::F64);
            let b = batch(DType::F64);
            let grads = loss(&model, &b).backward().unwrap();
            let vars: Vec<(String, candle_core::Var)> = {
                let data = model.varmap.data().lock().unwrap();
                let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            };
            let lossf = || loss(&model, &b).to_scalar::<f64>().unwrap();
            crate::test_util::check_finite_differences(&vars, &grads, lossf, 2, act);
        }
    }
}
