//! The files adore makes for one model (a controller, a key index): safetensors of f32 tensors
//! whose metadata names the file's format and the model's fingerprint.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// What a file is, for its metadata and its errors.
pub(crate) struct Kind {
    /// "controller": "not a controller file".
    pub name: &'static str,
    /// "controllers": "(controllers are F32)".
    pub plural: &'static str,
    /// The `format` metadata value.
    pub format: &'static str,
    /// "made" or "fitted": "was made for another model".
    pub made: &'static str,
    /// What to do about a file for another model.
    pub remedy: &'static str,
}

/// A file of `tensors` (name, shape, values) with `meta` beside the format and fingerprint.
pub(crate) fn write(kind: &Kind, fingerprint: &str, tensors: &[(&str, Vec<usize>, &[f32])], meta: &[(&str, String)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, shape, v)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytemuck::cast_slice(v))
                .map_err(|e| Error::arg(e.to_string()))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut all: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    all.insert("format".into(), kind.format.into());
    all.insert("model_fingerprint".into(), fingerprint.into());
    safetensors::serialize(views, Some(all)).map_err(|e| Error::arg(e.to_string()))
}

/// A file's metadata, with its name for errors.
pub(crate) struct Meta<'a> {
    pub file: &'a str,
    pub values: HashMap<String, String>,
}

impl Meta<'_> {
    pub fn bad(&self, what: String) -> Error {
        Error::malformed(self.file, what)
    }

    pub fn get(&self, k: &str) -> Result<String> {
        self.values.get(k).cloned().ok_or_else(|| self.bad(format!("metadata {k} is missing")))
    }

    pub fn num(&self, k: &str) -> Result<usize> {
        self.get(k)?.parse().map_err(|_| self.bad(format!("metadata {k} is not a number")))
    }
}

/// A file read and checked: its format, and that it was made for the model with the fingerprint.
pub(crate) struct Opened<'a> {
    pub meta: Meta<'a>,
    kind: &'a Kind,
    tensors: safetensors::SafeTensors<'a>,
}

impl<'a> Opened<'a> {
    pub fn open(file: &'a str, bytes: &'a [u8], kind: &'a Kind, fingerprint: &str) -> Result<Self> {
        let not = |e: safetensors::SafeTensorError| Error::malformed(file, format!("not a {} file: {e}", kind.name));
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(not)?;
        let meta = Meta { file, values: header.metadata().clone().unwrap_or_default() };
        if meta.get("format")? != kind.format {
            return Err(meta.bad(format!("format is {:?}, not {}", meta.values.get("format"), kind.format)));
        }
        let found = meta.get("model_fingerprint")?;
        if found != fingerprint {
            return Err(Error::Config(format!(
                "{file} was {} for another model (fingerprint {found}, this model's is {fingerprint}); {}",
                kind.made, kind.remedy
            )));
        }
        let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(not)?;
        Ok(Opened { meta, kind, tensors })
    }

    /// An F32 tensor's shape and values.
    pub fn tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let file = self.meta.file;
        let t = self.tensors.tensor(name).map_err(|_| Error::MissingTensor { tensor: format!("{file}: {name}") })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::UnknownDtype {
                file: file.into(),
                tensor: name.into(),
                dtype: format!("{:?} ({} are F32)", t.dtype(), self.kind.plural),
            });
        }
        Ok((t.shape().to_vec(), bytemuck::pod_collect_to_vec(t.data())))
    }
}
