//! Latte, the class-conditional and unconditional model of the paper, in all its variants: the network
//! ([`network`]: embeddings, the variant's arrangement of spatial and temporal blocks, the final layer), its blocks
//! ([`block`]), the owner of its parameters ([`LatteModel`]), the checks of its inputs ([`inputs`]) and the
//! options read off an official checkpoint ([`infer`]).

pub mod block;
pub mod infer;
pub mod inputs;
pub mod model;
pub mod network;
#[cfg(test)]
mod tests;

pub use inputs::NUM_TRAIN_TIMESTEPS;
pub use model::LatteModel;
pub use network::Latte;
