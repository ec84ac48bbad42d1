//! One module per command, each with its `Args` and `run`.

pub mod bench;
pub mod chat;
#[cfg(feature = "train")]
pub mod collect;
pub mod controller;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod index;
pub mod perplexity;
pub mod serve;
pub mod soak;
#[cfg(feature = "train")]
pub mod train_controller;
