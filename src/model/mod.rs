//! The models: the interface every denoiser implements ([`Denoiser`], conditioned on a [`Condition`]), Latte in
//! all the paper's variants ([`latte`]), the text-to-video Latte-1 transformer ([`t2v`]), the text encoder that
//! turns prompts into its caption features ([`text`]), and device and dtype names ([`device`]).

pub mod any;
pub mod attention_hook;
pub(crate) mod backprop;
pub(crate) mod checkpointing;
pub mod condition;
pub mod denoiser;
pub mod device;
pub mod graph;
pub mod guidance;
pub mod latte;
pub mod open;
pub mod t2v;
pub mod teacache_fit;
pub mod text;
pub mod windows;

pub use any::{AnyModel, ModelKind};
pub use attention_hook::{AttentionHook, AttentionKind, AttentionSite};
pub use condition::Condition;
pub use denoiser::{Denoiser, DenoiserSpec, LatentLayout, LossFn, StagedPass};
pub use device::{device_name, dtype_name, parse_device, parse_dtype};
pub use graph::Graph;
pub use guidance::{apply_guidance, GuidanceRule};
pub use latte::{Latte, LatteModel, NUM_TRAIN_TIMESTEPS};
pub use open::{open_model, OpenOptions, OpenedModel};
pub use t2v::{LatteT2VConfig, LatteT2VModel};
pub use text::t5::{T5Config, T5EncoderModel};
pub use windows::TemporalWindows;
