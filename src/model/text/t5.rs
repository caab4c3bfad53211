//! The T5 encoder that turns prompts into Latte-1's caption features (PixArt's T5 v1.1 XXL), as transformers'
//! `T5EncoderModel`: its `config.json` keys and parameter names, so a `text_encoder/` folder loads as it is.
//!
//! RMS layer norms (no mean, no bias), unscaled attention with a learned bucketed relative-position bias (from
//! the first block, shared by all), gated-GELU (v1.1) or ReLU (original T5) feed-forward, and the padding mask
//! added to the attention scores as transformers does (the float32 minimum).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{value_error, LatteError, Result};
use crate::nn::gelu::gelu;
use crate::nn::Linear;
use crate::weights::diffusers::{read_folder, TRANSFORMERS_WEIGHTS};
use crate::weights::{LoadPolicy, ParamStore};

/// transformers' `T5Config` (the keys the encoder needs; others are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    /// The tokenizer's padding and end-of-sequence ids (T5's 0 and 1).
    pub pad_token_id: u32,
    pub eos_token_id: u32,
}

impl Default for T5Config {
    /// T5 v1.1 XXL (PixArt-α / Latte-1's text encoder).
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            pad_token_id: 0,
            eos_token_id: 1,
        }
    }
}

impl T5Config {
    /// Refuses sizes the encoder cannot be built from or that no T5 has (far beyond XXL's).
    pub fn validate(&self) -> Result<()> {
        self.gated()?;
        crate::limits::sizes(&[
            ("vocab_size", self.vocab_size, 1, 1 << 22),
            ("d_model", self.d_model, 1, 1 << 16),
            ("d_kv", self.d_kv, 1, 1 << 12),
            ("d_ff", self.d_ff, 1, 1 << 18),
            ("num_layers", self.num_layers, 1, 1 << 10),
            ("num_heads", self.num_heads, 1, 1 << 10),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                1,
                1 << 12,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
                1,
                1 << 20,
            ),
        ])?;
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(LatteError::Config(format!(
                "layer_norm_epsilon: expected a positive finite value, got {}",
                self.layer_norm_epsilon
            )));
        }
        Ok(())
    }

    fn gated(&self) -> Result<bool> {
        match self.feed_forward_proj.as_str() {
            "gated-gelu" => Ok(true),
            "relu" => Ok(false),
            other => Err(LatteError::Config(format!(
                "feed_forward_proj {other:?}: expected \"gated-gelu\" (T5 v1.1) or \"relu\" (T5)"
            ))),
        }
    }
}

/// T5's layer norm: `x / sqrt(mean(x²) + eps) · weight`, the statistic in f32.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)
    }
}

struct Layer {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: RmsNorm,
    wi: Vec<Linear>,
    wo: Linear,
}

/// The encoder stack (parameters under transformers' names).
pub struct T5Encoder {
    cfg: T5Config,
    embed: Tensor,
    relative_bias: Tensor,
    layers: Vec<Layer>,
    final_norm: RmsNorm,
    gated: bool,
}

impl T5Encoder {
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let gated = cfg.gated()?;
        let (d, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        let norm = |vb: VarBuilder| -> candle_core::Result<RmsNorm> {
            Ok(RmsNorm {
                weight: vb.get(d, "weight")?,
                eps: cfg.layer_norm_epsilon,
            })
        };
        let enc = vb.pp("encoder");
        let mut layers = Vec::new();
        for i in 0..cfg.num_layers {
            let b = enc.pp("block").pp(i.to_string()).pp("layer");
            let sa = b.pp("0").pp("SelfAttention");
            let ff = b.pp("1").pp("DenseReluDense");
            let wi = if gated {
                vec![
                    Linear::new(d, cfg.d_ff, false, ff.pp("wi_0"))?,
                    Linear::new(d, cfg.d_ff, false, ff.pp("wi_1"))?,
                ]
            } else {
                vec![Linear::new(d, cfg.d_ff, false, ff.pp("wi"))?]
            };
            layers.push(Layer {
                attn_norm: norm(b.pp("0").pp("layer_norm"))?,
                q: Linear::new(d, inner, false, sa.pp("q"))?,
                k: Linear::new(d, inner, false, sa.pp("k"))?,
                v: Linear::new(d, inner, false, sa.pp("v"))?,
                o: Linear::new(inner, d, false, sa.pp("o"))?,
                ff_norm: norm(b.pp("1").pp("layer_norm"))?,
                wi,
                wo: Linear::new(cfg.d_ff, d, false, ff.pp("wo"))?,
            });
        }
        let rel = enc
            .pp("block")
            .pp("0")
            .pp("layer")
            .pp("0")
            .pp("SelfAttention")
            .pp("relative_attention_bias");
        Ok(Self {
            cfg: cfg.clone(),
            embed: vb.pp("shared").get((cfg.vocab_size, d), "weight")?,
            relative_bias: rel.get((cfg.relative_attention_num_buckets, cfg.num_heads), "weight")?,
            layers,
            final_norm: norm(enc.pp("final_layer_norm"))?,
            gated,
        })
    }

    /// transformers' bidirectional `_relative_position_bucket` for key − query offsets.
    fn bucket(&self, relative: i64) -> usize {
        let buckets = (self.cfg.relative_attention_num_buckets / 2) as i64;
        let mut ret = if relative > 0 { buckets } else { 0 };
        let n = relative.abs();
        let max_exact = buckets / 2;
        if n < max_exact {
            ret += n;
        } else {
            // As transformers computes it: a float32 log divided by a Python-float log (cast to float32).
            let scale = (buckets - max_exact) as f32;
            let denominator = (self.cfg.relative_attention_max_distance as f64 / max_exact as f64).ln() as f32;
            let log_ratio = (n as f32 / max_exact as f32).ln() / denominator * scale;
            ret += (max_exact + log_ratio as i64).min(buckets - 1);
        }
        ret as usize
    }

    /// Hidden states `(B, L, d_model)` of token ids `(B, L)` with a 0/1 attention mask `(B, L)`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let dev = ids.device();
        let dtype = self.embed.dtype();
        let mut h = self
            .embed
            .embedding(&ids.flatten_all()?)?
            .reshape((b, l, self.cfg.d_model))?;
        let buckets: Vec<u32> = (0..l)
            .flat_map(|q| (0..l).map(move |k| (q, k)))
            .map(|(q, k)| self.bucket(k as i64 - q as i64) as u32)
            .collect();
        let buckets = Tensor::from_vec(buckets, l * l, dev)?;
        let heads = self.cfg.num_heads;
        let bias = self
            .relative_bias
            .embedding(&buckets)?
            .reshape((l, l, heads))?
            .permute((2, 0, 1))?; // (H, L, L)
        let min = f32::MIN as f64;
        let additive = ((mask.to_dtype(DType::F32)?.affine(-1.0, 1.0)?) * min)?.to_dtype(dtype)?; // (B, L)
        let bias = bias.unsqueeze(0)?.broadcast_add(&additive.reshape((b, 1, 1, l))?)?; // (B, H, L, L)
        let dk = self.cfg.d_kv;
        for layer in &self.layers {
            let x = layer.attn_norm.forward(&h)?;
            let split = |t: Tensor| t.reshape((b, l, heads, dk))?.transpose(1, 2)?.contiguous();
            let (q, k, v) = (
                split(layer.q.forward(&x)?)?,
                split(layer.k.forward(&x)?)?,
                split(layer.v.forward(&x)?)?,
            );
            let scores = q.matmul(&k.t()?)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(dtype)?;
            let out = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, l, heads * dk))?;
            h = (h + layer.o.forward(&out)?)?;
            let x = layer.ff_norm.forward(&h)?;
            let f = if self.gated {
                (gelu(&layer.wi[0].forward(&x)?)? * layer.wi[1].forward(&x)?)?
            } else {
                layer.wi[0].forward(&x)?.relu()?
            };
            h = (h + layer.wo.forward(&f)?)?;
        }
        self.final_norm.forward(&h)
    }
}

/// A T5 encoder with its weights, loaded from a transformers `text_encoder/` folder.
pub struct T5EncoderModel {
    cfg: T5Config,
    model: T5Encoder,
    device: Device,
}

impl T5EncoderModel {
    /// Reads `config.json` and `model.safetensors` (or its shards with `model.safetensors.index.json`).
    /// `shared.weight` and `encoder.embed_tokens.weight` are the same (tied) table; either is accepted.
    pub fn from_pretrained(dir: &Path, device: &Device, dtype: Option<DType>) -> Result<Self> {
        let folder = read_folder::<T5Config>(dir, "a text_encoder/ folder", TRANSFORMERS_WEIGHTS)?;
        let cfg = folder.config;
        cfg.validate()
            .map_err(|e| LatteError::Config(format!("{}: {e}", dir.join("config.json").display())))?;
        let mut state = folder.tensors;
        if !state.contains_key("shared.weight") {
            if let Some(t) = state.get("encoder.embed_tokens.weight").cloned() {
                state.insert("shared.weight".into(), t);
            }
        }
        state.remove("encoder.embed_tokens.weight");
        let dtype = dtype.unwrap_or_else(|| state.values().next().map_or(DType::F32, |t| t.dtype()));
        let store = ParamStore::new(device, dtype)?;
        let model = store.build(true, |vb| T5Encoder::new(&cfg, vb))?;
        // A full T5 checkpoint's decoder weights are not the encoder's business.
        let policy = LoadPolicy {
            allow_missing: false,
            allow_unexpected: true,
        };
        store.load(&state, policy, Some(&folder.source), "T5 encoder config")?;
        Ok(Self {
            cfg,
            model,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    /// The empty prompt (`""`, the default negative prompt of classifier-free guidance) padded to `max_length`
    /// tokens: its T5 features `(1, max_length, d_model)` and 0/1 mask `(1, max_length)`. T5's tokenizer makes
    /// it `</s>` and padding, so no tokenizer is needed.
    pub fn empty_prompt(&self, max_length: usize) -> Result<(Tensor, Tensor)> {
        if max_length == 0 {
            return Err(value_error("max_length", "at least 1", 0));
        }
        self.check_memory(1, max_length, "max_length")?;
        let mut ids = vec![self.cfg.pad_token_id as i64; max_length];
        ids[0] = self.cfg.eos_token_id as i64;
        let mut mask = vec![0i64; max_length];
        mask[0] = 1;
        let ids = Tensor::from_vec(ids, (1, max_length), &Device::Cpu)?;
        let mask = Tensor::from_vec(mask, (1, max_length), &Device::Cpu)?;
        Ok((self.encode(&ids, Some(&mask))?, mask))
    }

    /// Refuses (before anything is allocated) an encoding of `batch` sequences of `len` tokens whose activations
    /// (a few of width d_model or d_ff, and the attention scores, L² per head) cannot fit.
    fn check_memory(&self, batch: usize, len: usize, arg: &str) -> Result<()> {
        let c = &self.cfg;
        crate::limits::elements(arg, &[batch, len, len.max(c.d_ff), c.num_heads.max(1)])?;
        let (b, l) = (batch as u128, len as u128);
        let values = b * l * (4 * c.d_model as u128 + c.d_ff as u128) + b * c.num_heads as u128 * l * l;
        crate::limits::ensure_fits(values * 4, &format!("the T5 encoder on {batch} × {len} tokens"))
    }

    /// Encodes token ids `(B, L)` (integers below vocab_size) with a 0/1 mask `(B, L)` (None: all ones).
    pub fn encode(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let dims = ids.dims();
        if dims.len() != 2 || dims.contains(&0) {
            return Err(value_error("input_ids", "shape (B, L)", format!("{dims:?}")));
        }
        self.check_memory(dims[0], dims[1], "input_ids")?;
        let ids_i64 = ids.to_dtype(DType::I64)?;
        let flat = ids_i64.flatten_all()?.to_vec1::<i64>()?;
        if let Some(bad) = flat.iter().find(|&&i| i < 0 || i as usize >= self.cfg.vocab_size) {
            return Err(value_error(
                "input_ids",
                format!("ids in [0, {})", self.cfg.vocab_size),
                bad,
            ));
        }
        let mask = match mask {
            Some(m) if m.dims() == dims => {
                let m = m.to_dtype(DType::F32)?;
                // Any other value would scale T5's additive -3.4e38 mask past the float range (NaN scores).
                if m.flatten_all()?.to_vec1::<f32>()?.iter().any(|&v| v != 0.0 && v != 1.0) {
                    return Err(value_error(
                        "attention_mask",
                        "0/1 values (1 for tokens, 0 for padding)",
                        "other values",
                    ));
                }
                m
            }
            Some(m) => {
                return Err(value_error(
                    "attention_mask",
                    format!("shape {dims:?}"),
                    format!("{:?}", m.dims()),
                ))
            }
            None => Tensor::ones(dims, DType::F32, &Device::Cpu)?,
        };
        let ids = ids_i64.to_dtype(DType::U32)?.to_device(&self.device)?;
        Ok(self.model.forward(&ids, &mask.to_device(&self.device)?)?)
    }
}
