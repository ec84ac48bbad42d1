//! GGUF (v2, v3) reading and writing: metadata, tensor directory and data, every count and
//! offset checked against the file's length before anything is allocated.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::tensor::{bad_scale, ggml_type_name, DType, HostTensor};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    /// Outermost first (GGUF stores innermost first).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    pub bytes: u64,
}

/// A parsed GGUF file borrowing its bytes.
pub struct Gguf<'a> {
    pub file: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

struct Reader<'a> {
    file: &'a str,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.buf.len() as u64);
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end as usize];
                self.pos = end as usize;
                Ok(s)
            }
            None => Err(Error::Truncated { file: self.file.into(), what: what(), needed: self.pos as u64 + n, len: self.buf.len() as u64 }),
        }
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.u64(what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::malformed(self.file, format!("{} is not valid UTF-8", what())))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        let what = || format!("metadata value {key:?}");
        let b = |r: &mut Self, n| r.take(n, &what);
        Ok(match ty {
            0 => Value::U8(b(self, 1)?[0]),
            1 => Value::I8(b(self, 1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(b(self, 2)?.try_into().unwrap_or([0; 2]))),
            3 => Value::I16(i16::from_le_bytes(b(self, 2)?.try_into().unwrap_or([0; 2]))),
            4 => Value::U32(self.u32(&what)?),
            5 => Value::I32(self.u32(&what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(&what)?)),
            7 => match b(self, 1)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                v => return Err(Error::malformed(self.file, format!("metadata {key:?}: boolean byte is {v}, not 0 or 1"))),
            },
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth > 2 {
                    return Err(Error::malformed(self.file, format!("metadata {key:?}: arrays nested too deeply")));
                }
                let elem = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Every element takes at least one byte: a count beyond the bytes left is a lie.
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10 | 11 | 12 => 8,
                    9 => 12,
                    t => return Err(Error::malformed(self.file, format!("metadata {key:?}: unknown array element type {t}"))),
                };
                if count.checked_mul(min_size).is_none_or(|n| n > self.remaining()) {
                    return Err(Error::Truncated {
                        file: self.file.into(),
                        what: format!("metadata array {key:?} of {count} elements"),
                        needed: (self.pos as u64).saturating_add(count.saturating_mul(min_size)),
                        len: self.buf.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(self.u64(&what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what)?)),
            t => return Err(Error::malformed(self.file, format!("metadata {key:?} has unknown value type {t}"))),
        })
    }
}

impl<'a> Gguf<'a> {
    /// Parses the header, metadata and tensor directory of `data`; `file` names it in errors.
    pub fn parse(file: &str, data: &'a [u8]) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::EmptyFile { path: file.into() });
        }
        let mut r = Reader { file, buf: data, pos: 0 };
        let magic = r.take(4, &|| "the magic number".into())?;
        if magic != MAGIC {
            return Err(Error::BadMagic { file: file.into(), found: magic.try_into().unwrap_or([0; 4]) });
        }
        let version = r.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion { file: file.into(), version });
        }
        let n_tensors = r.u64(&|| "the tensor count".into())?;
        let n_kv = r.u64(&|| "the metadata count".into())?;
        // A key-value pair takes at least 13 bytes and a tensor entry at least 28.
        for (count, min, what) in [(n_kv, 13u64, "metadata entries"), (n_tensors, 28u64, "tensor entries")] {
            if count.checked_mul(min).is_none_or(|n| n > r.remaining()) {
                return Err(Error::Truncated {
                    file: file.into(),
                    what: format!("{count} {what}"),
                    needed: count.saturating_mul(min),
                    len: data.len() as u64,
                });
            }
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let ty = r.u32(&|| format!("the type of metadata {key:?}"))?;
            let value = r.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("the name of tensor #{i}"))?;
            let n_dims = r.u32(&|| format!("the rank of tensor {name}"))?;
            if n_dims == 0 || n_dims > 4 {
                return Err(Error::malformed(file, format!("tensor {name} has {n_dims} dimensions (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&|| format!("the shape of tensor {name}"))?);
            }
            let ty = r.u32(&|| format!("the type of tensor {name}"))?;
            let offset = r.u64(&|| format!("the offset of tensor {name}"))?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(Error::malformed(file, format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_start = (r.pos as u64).next_multiple_of(alignment);
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let dtype = DType::from_ggml(ty).ok_or_else(|| Error::UnknownDtype {
                file: file.into(),
                tensor: name.clone(),
                dtype: ggml_type_name(ty),
            })?;
            let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n > 0 && n < 1 << 40);
            let numel = numel.ok_or_else(|| Error::malformed(file, format!("tensor {name} has an impossible shape {dims:?}")))?;
            let bytes = dtype
                .bytes_for(numel)
                .ok_or_else(|| Error::malformed(file, format!("tensor {name}: {numel} elements are not whole blocks of {:?}", dtype)))?;
            if dims[0] % dtype.block_size() as u64 != 0 {
                return Err(Error::malformed(file, format!("tensor {name}: rows of {} are not whole {:?} blocks", dims[0], dtype)));
            }
            let start = data_start.checked_add(offset);
            let end = start.and_then(|s| s.checked_add(bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= data.len() as u64 => {
                    if let Some((block, field, v)) = bad_scale(dtype, &data[s as usize..e as usize]) {
                        return Err(Error::malformed(
                            file,
                            format!("tensor {name}: {dtype:?} block {block} has {field} = {v}, which makes its weights NaN or infinite"),
                        ));
                    }
                    tensors.push(TensorInfo {
                        name,
                        dtype,
                        shape: dims.iter().rev().map(|&d| d as usize).collect(),
                        offset: s,
                        bytes: e - s,
                    })
                }
                _ => {
                    return Err(Error::Truncated {
                        file: file.into(),
                        what: format!("tensor {name}"),
                        needed: end.unwrap_or(u64::MAX),
                        len: data.len() as u64,
                    })
                }
            }
        }
        Ok(Self { file: file.into(), version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The tensor's bytes, borrowed from the file.
    pub fn tensor(&self, info: &TensorInfo) -> HostTensor<'a> {
        let data = &self.data[info.offset as usize..(info.offset + info.bytes) as usize];
        HostTensor { name: info.name.clone(), dtype: info.dtype, shape: info.shape.clone(), data: std::borrow::Cow::Borrowed(data) }
    }
}

/// Writes a GGUF v3 file (used by tests and tools).
pub fn write(metadata: &[(&str, Value)], tensors: &[HostTensor]) -> Vec<u8> {
    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn put_value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::String(s) => put_str(out, s),
            Value::Array(items) => {
                let elem = items.first().map_or(4, Value::type_id);
                out.extend_from_slice(&elem.to_le_bytes());
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| put_value(out, i));
            }
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend_from_slice(&v.type_id().to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        out.extend_from_slice(&t.dtype.ggml_id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + t.data.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
    }
    out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT as usize), 0);
    for t in tensors {
        out.extend_from_slice(&t.data);
        out.resize(out.len().next_multiple_of(DEFAULT_ALIGNMENT as usize), 0);
    }
    out
}
