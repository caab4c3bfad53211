//! [`Condition`]: what a denoiser is conditioned on (nothing, class labels, caption features), as one value the
//! sampling loop and the trainer pass through without knowing which.

use candle_core::Tensor;

use crate::error::{value_error, LatteError, Result};

/// What a denoiser is conditioned on.
#[derive(Clone, Debug)]
pub enum Condition {
    /// Nothing: an unconditional model.
    Unconditional,
    /// Class labels `(B,)` and, for image-video joint clips, the image frames' labels `(B, use_image_num)`.
    Classes {
        labels: Tensor,
        image_labels: Option<Tensor>,
    },
    /// Caption features `(B, S, caption_channels)` from the text encoder, with their 0/1 padding mask `(B, S)`.
    Text { embeddings: Tensor, mask: Option<Tensor> },
}

impl Condition {
    /// What the condition is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unconditional => "no condition",
            Self::Classes { .. } => "class labels",
            Self::Text { .. } => "text embeddings",
        }
    }

    /// Clips `start..start + len` of a batch's condition (a micro-batch's).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Condition> {
        let cut = |t: &Tensor| t.narrow(0, start, len);
        Ok(match self {
            Self::Unconditional => Self::Unconditional,
            Self::Classes { labels, image_labels } => Self::Classes {
                labels: cut(labels)?,
                image_labels: image_labels.as_ref().map(cut).transpose()?,
            },
            Self::Text { embeddings, mask } => Self::Text {
                embeddings: cut(embeddings)?,
                mask: mask.as_ref().map(cut).transpose()?,
            },
        })
    }

    /// The condition of a guided pass: this batch's, then `other`'s (the unconditional branch).
    pub fn concat(&self, other: &Condition) -> Result<Condition> {
        let cat = |a: &Tensor, b: &Tensor, arg: &str| -> Result<Tensor> {
            if a.dims()[1..] != b.dims()[1..] {
                return Err(value_error(
                    arg,
                    format!("the same shape per sample as the conditional branch's {:?}", a.dims()),
                    format!("{:?}", b.dims()),
                ));
            }
            Ok(Tensor::cat(&[a, &b.to_dtype(a.dtype())?.to_device(a.device())?], 0)?)
        };
        let both = |a: &Option<Tensor>, b: &Option<Tensor>, arg: &str| -> Result<Option<Tensor>> {
            match (a, b) {
                (Some(a), Some(b)) => Ok(Some(cat(a, b, arg)?)),
                (None, None) => Ok(None),
                (Some(a), None) | (None, Some(a)) => Err(LatteError::Value(format!(
                    "{arg}: given for one branch of classifier-free guidance only (shape {:?})",
                    a.dims()
                ))),
            }
        };
        match (self, other) {
            (Self::Unconditional, Self::Unconditional) => Ok(Self::Unconditional),
            (
                Self::Classes { labels, image_labels },
                Self::Classes {
                    labels: l2,
                    image_labels: i2,
                },
            ) => Ok(Self::Classes {
                labels: cat(labels, l2, "labels")?,
                image_labels: both(image_labels, i2, "image_labels")?,
            }),
            (
                Self::Text { embeddings, mask },
                Self::Text {
                    embeddings: e2,
                    mask: m2,
                },
            ) => Ok(Self::Text {
                embeddings: cat(embeddings, e2, "negative_prompt_embeds")?,
                mask: both(mask, m2, "encoder_attention_mask")?,
            }),
            (a, b) => Err(LatteError::Value(format!(
                "guidance: the unconditional branch has {}, the conditional one {}",
                b.kind(),
                a.kind()
            ))),
        }
    }
}
