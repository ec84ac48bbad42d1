//! The library's error type: every failure a user can cause or meet, each saying what to do.

use std::path::PathBuf;

/// Everything that can go wrong in `adore`, typed so that callers can react and users can read it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The I/O error is named in the message, not also given as the source, so that a printed
    /// chain of causes says it once.
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },

    #[error("{path}: the file is empty")]
    EmptyFile { path: String },

    #[error("{file}: not a GGUF file (magic bytes are {found:02x?}, expected \"GGUF\")")]
    BadMagic { file: String, found: [u8; 4] },

    #[error("{file}: GGUF version {version} is not supported (versions 2 and 3 are)")]
    UnsupportedVersion { file: String, version: u32 },

    #[error(
        "{file}: the file ends at byte {len} but {what} needs bytes up to {needed}: the file is truncated or corrupt (re-download it)"
    )]
    Truncated { file: String, what: String, needed: u64, len: u64 },

    #[error("{file}: {what}")]
    Malformed { file: String, what: String },

    #[error(
        "{file}: tensor {tensor} has data type {dtype}, which this engine does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
    )]
    UnknownDtype { file: String, tensor: String, dtype: String },

    #[error(
        "{file}: {what}, which this engine does not implement; refusing to run the model without it rather than compute something else"
    )]
    Unsupported { file: String, what: String },

    #[error("tensor {tensor} has shape {found:?} but the model configuration requires {expected:?}")]
    ShapeMismatch { tensor: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("tensor {tensor} is missing from the model files")]
    MissingTensor { tensor: String },

    #[error("invalid model configuration: {0}")]
    Config(String),

    #[error("tensor {tensor} needs {bytes} bytes in one GPU binding but this device allows at most {limit} (max_storage_buffer_binding_size); use a more quantized file or a device with larger limits")]
    TensorTooLarge { tensor: String, bytes: u64, limit: u64 },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("the prompt is {tokens} tokens long but the context holds at most {context}; shorten the prompt or raise the context")]
    PromptTooLong { tokens: usize, context: usize },

    #[error("the prompt is empty: give at least one token of text")]
    EmptyPrompt,

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("shape error in {op}: {what}")]
    Shape { op: &'static str, what: String },

    #[error("no GPU adapter found ({0}). On Linux without a GPU install Mesa's software Vulkan driver: apt-get install mesa-vulkan-drivers (lavapipe)")]
    NoAdapter(String),

    #[error("the GPU refused the device request: {0}")]
    Device(String),

    #[error("GPU error: {0}")]
    Gpu(String),

    #[error("the GPU device was lost ({0}); this engine is closed: load the model again")]
    DeviceLost(String),

    #[error("download failed: {0}")]
    Download(String),

    #[error("{file}: checksum mismatch (sha256 {found}, expected {expected}); the file is corrupt or was changed, delete it and retry")]
    Checksum { file: String, found: String, expected: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The variant's name in snake case: a stable identifier for programs (the browser API's
    /// error `kind`, the malformed-input corpus).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::EmptyFile { .. } => "empty_file",
            Error::BadMagic { .. } => "bad_magic",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::Truncated { .. } => "truncated",
            Error::Malformed { .. } => "malformed",
            Error::UnknownDtype { .. } => "unknown_dtype",
            Error::Unsupported { .. } => "unsupported",
            Error::ShapeMismatch { .. } => "shape_mismatch",
            Error::MissingTensor { .. } => "missing_tensor",
            Error::Config(_) => "config",
            Error::TensorTooLarge { .. } => "tensor_too_large",
            Error::Tokenizer(_) => "tokenizer",
            Error::PromptTooLong { .. } => "prompt_too_long",
            Error::EmptyPrompt => "empty_prompt",
            Error::InvalidArgument(_) => "invalid_argument",
            Error::Shape { .. } => "shape",
            Error::NoAdapter(_) => "no_adapter",
            Error::Device(_) => "device",
            Error::Gpu(_) => "gpu",
            Error::DeviceLost(_) => "device_lost",
            Error::Download(_) => "download",
            Error::Checksum { .. } => "checksum",
        }
    }

    pub(crate) fn malformed(file: &str, what: impl Into<String>) -> Self {
        Error::Malformed { file: file.to_string(), what: what.into() }
    }
    pub(crate) fn unsupported(file: &str, what: impl Into<String>) -> Self {
        Error::Unsupported { file: file.to_string(), what: what.into() }
    }
    pub(crate) fn arg(what: impl Into<String>) -> Self {
        Error::InvalidArgument(what.into())
    }
}
