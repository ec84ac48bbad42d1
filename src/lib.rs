//! adore: portable WebGPU inference for Llama-family models, with a slot-based KV cache built
//! for adaptive token release (ADORE).
//!
//! Data flow: model file -> [`model::ModelSpec`] -> [`model::Model`] (weights on the GPU) ->
//! [`session::Session`] (run state, plans, KV cache) -> [`generate`].

pub mod controller;
pub mod error;
pub mod eval;
#[cfg(all(feature = "fetch", not(target_arch = "wasm32")))]
pub mod fetch;
pub mod generate;
pub mod gpu;
pub mod index;
pub mod model;
mod model_file;
pub mod ops;
pub mod policy;
pub mod profile;
pub mod session;
pub mod shaders;
pub mod tensor;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::{Error, Result};
pub use generate::{generate, GenerateOptions, Generation, Message, Stats, StopReason};
pub use gpu::{Context, ContextOptions};
pub use model::{Model, ModelSpec, Source};
pub use ops::sample::Sampling;
pub use session::{Session, SessionOptions};
