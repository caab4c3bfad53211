//! Parameters and the files they live in: the one parameter store every model keeps its weights in, the one
//! strict loader (with its report), diffusers/transformers folders, PyTorch checkpoints, and latte-rs's own file
//! names and formats, each defined once.

pub mod checkpoint;
pub mod diffusers;
pub mod format;
pub mod store;
pub mod torch;

pub use format::Format;
pub use store::{check_float_dtype, LoadPolicy, LoadReport, ParamStore};
pub use torch::{read_torch_state_dict, CheckpointInfo};
