//! The text-to-video Latte transformer of Latte-1 (diffusers' `LatteTransformer3DModel`), with diffusers'
//! parameter names and `config.json` keys so a diffusers `transformer/` folder loads as it is: its config
//! ([`config`]), its diffusers-specific layers ([`blocks`]), the network ([`network`], reusing Latte's patch and
//! timestep embeddings, norms and modulation), the owner of its parameters ([`LatteT2VModel`]) and the checks of
//! its inputs ([`inputs`]).

pub mod blocks;
pub mod config;
pub mod inputs;
pub mod model;
pub mod network;
#[cfg(test)]
pub(crate) mod tests;

pub use config::LatteT2VConfig;
pub use model::LatteT2VModel;
pub use network::LatteT2V;
