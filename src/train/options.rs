//! [`TrainerOptions`]: the optimiser, its schedule and the step's switches, checked in one place; the defaults are
//! the official Latte recipe (AdamW 1e-4, no weight decay, constant LR, EMA 0.9999, seed 3407).

use serde::{Deserialize, Serialize};

use super::optim::AdamWConfig;
use crate::error::{value_error, Result};

/// The trainer's options; the defaults are the official Latte recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerOptions {
    pub optimizer: AdamWConfig,
    /// Linear warm-up of the learning rate over this many optimiser steps (0: constant from the start).
    pub warmup_steps: u64,
    pub ema_decay: f64,
    /// Clip the global gradient norm to this value (None: never clip).
    pub grad_clip: Option<f64>,
    /// Clip only once this many optimiser steps are done (the official `start_clip_iter`).
    pub clip_start_step: u64,
    /// Micro-batches per optimiser step.
    pub grad_accumulation: usize,
    /// Recompute block activations in the backward pass instead of storing them.
    pub gradient_checkpointing: bool,
    /// On a non-finite loss or gradient: skip the step and count it (true) or raise an error (false). The weights
    /// are untouched either way.
    pub skip_nonfinite: bool,
    pub seed: u64,
    /// Text models: the probability that a clip's caption is replaced by the null caption (the empty prompt's
    /// features, the unconditional branch of classifier-free guidance); one draw per clip for its video caption
    /// and one for all its image captions. Class models drop labels by their config's `class_dropout_prob`.
    #[serde(default = "default_caption_dropout")]
    pub caption_dropout_prob: f64,
}

fn default_caption_dropout() -> f64 {
    0.1
}

impl Default for TrainerOptions {
    fn default() -> Self {
        Self {
            optimizer: AdamWConfig::default(),
            warmup_steps: 0,
            ema_decay: 0.9999,
            grad_clip: None,
            clip_start_step: 0,
            grad_accumulation: 1,
            gradient_checkpointing: false,
            skip_nonfinite: false,
            seed: 3407,
            caption_dropout_prob: default_caption_dropout(),
        }
    }
}

impl TrainerOptions {
    pub fn validate(&self) -> Result<()> {
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr >= 0.0) {
            return Err(value_error("lr", "a finite number >= 0", o.lr));
        }
        for (name, b) in [("betas[0]", o.beta1), ("betas[1]", o.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(value_error(name, "a value in [0, 1)", b));
            }
        }
        // Below 1e-30 eps is 0 or subnormal in float32, and AdamW divides 0 by it where a gradient is 0.
        if !(o.eps.is_finite() && o.eps >= 1e-30) {
            return Err(value_error("eps", "a finite number >= 1e-30", format!("{:?}", o.eps)));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(value_error("weight_decay", "a finite number >= 0", o.weight_decay));
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return Err(value_error("ema_decay", "a value in [0, 1]", self.ema_decay));
        }
        if let Some(c) = self.grad_clip {
            if !(c.is_finite() && c > 0.0) {
                return Err(value_error("grad_clip", "None or a finite number > 0", c));
            }
        }
        if self.grad_accumulation == 0 {
            return Err(value_error("grad_accumulation", "an integer >= 1", 0));
        }
        if !(0.0..=1.0).contains(&self.caption_dropout_prob) {
            return Err(value_error(
                "caption_dropout_prob",
                "a value in [0, 1]",
                self.caption_dropout_prob,
            ));
        }
        Ok(())
    }

    /// The learning rate of the 1-based optimiser step `step`: linear warm-up, then constant.
    pub fn lr_at(&self, step: u64) -> f64 {
        let lr = self.optimizer.lr;
        if self.warmup_steps == 0 {
            lr
        } else {
            lr * (step as f64 / self.warmup_steps as f64).min(1.0)
        }
    }
}
