//! Condition dropout, the training half of classifier-free guidance: class labels replaced by the null class and
//! captions by the null caption (the empty prompt's features), each with its probability, drawn from the trainer's
//! stream so that a resumed run drops the same conditions.

use candle_core::Tensor;

use crate::error::{value_error, LatteError, Result};
use crate::model::Condition;
use crate::rng::Generator;

/// What a train step drops conditions to, and how often.
#[derive(Clone, Copy)]
pub(crate) struct Dropout<'a> {
    /// A class model's (null class, probability), None when it drops no labels.
    pub labels: Option<(i64, f64)>,
    /// A text model's caption dropout probability.
    pub caption_prob: f64,
    /// The null caption `(1, S, caption_channels)` (required when `caption_prob` > 0 and captions are given).
    pub null_caption: Option<&'a Tensor>,
}

/// The classifier-free-guidance dropout of a checked condition: class labels to the null class (one draw per
/// clip for its label and one for all its image labels, as the official `LabelEmbedder.token_drop`), captions
/// to the null caption (the same two draws per clip).
pub(crate) fn drop_condition(
    cond: Condition,
    b: usize,
    dropout: Dropout<'_>,
    rng: &mut Generator,
) -> Result<Condition> {
    match cond {
        Condition::Classes { labels, image_labels } => {
            let Some((null, p)) = dropout.labels else {
                return Ok(Condition::Classes { labels, image_labels });
            };
            let null = null as u32;
            let mut drop = |l: &Tensor| -> Result<Tensor> {
                let mut v = l.flatten_all()?.to_vec1::<u32>()?;
                let per = (v.len() / b).max(1);
                for (chunk, u) in v.chunks_mut(per).zip(rng.uniform(b, 0.0, 1.0)) {
                    if u < p {
                        chunk.iter_mut().for_each(|l| *l = null);
                    }
                }
                Ok(Tensor::from_vec(v, l.dims(), l.device())?)
            };
            let labels = drop(&labels)?;
            let image_labels = image_labels.as_ref().map(&mut drop).transpose()?;
            Ok(Condition::Classes { labels, image_labels })
        }
        Condition::Text { embeddings, mask } => {
            let p = dropout.caption_prob;
            if p == 0.0 {
                return Ok(Condition::Text { embeddings, mask });
            }
            let null = dropout.null_caption.ok_or_else(|| {
                LatteError::Value(format!(
                    "null_caption: caption dropout (caption_dropout_prob = {p}) replaces dropped captions by the \
                     empty prompt's T5 features; give them (T5TextEncoder.empty_prompt(max_length), or the \
                     latent cache's null_caption), or set caption_dropout_prob=0"
                ))
            })?;
            let s = embeddings.dim(embeddings.rank() - 2)?;
            if null.dim(1)? != s {
                return Err(value_error(
                    "null_caption",
                    format!("{s} tokens (the batch's captions')"),
                    format!("{} tokens", null.dim(1)?),
                ));
            }
            let null = null.to_dtype(embeddings.dtype())?.to_device(embeddings.device())?;
            let joint = embeddings.rank() == 4;
            let video_drop = rng.uniform(b, 0.0, 1.0);
            let image_drop = if joint { rng.uniform(b, 0.0, 1.0) } else { Vec::new() };
            let mut rows = Vec::with_capacity(b);
            for i in 0..b {
                let clip = embeddings.narrow(0, i, 1)?;
                let pick = |drop: bool, t: Tensor| -> candle_core::Result<Tensor> {
                    if drop {
                        null.reshape((1, 1, null.dim(1)?, null.dim(2)?))?
                            .broadcast_as(t.dims())?
                            .contiguous()
                    } else {
                        Ok(t)
                    }
                };
                rows.push(if joint {
                    let n = clip.dim(1)?;
                    let video = pick(video_drop[i] < p, clip.narrow(1, 0, 1)?)?;
                    let images = pick(image_drop[i] < p, clip.narrow(1, 1, n - 1)?)?;
                    Tensor::cat(&[&video, &images], 1)?
                } else if video_drop[i] < p {
                    null.clone()
                } else {
                    clip
                });
            }
            Ok(Condition::Text {
                embeddings: Tensor::cat(&rows, 0)?,
                mask,
            })
        }
        other => Ok(other),
    }
}
