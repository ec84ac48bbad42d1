//! The WGSL sources, one file per kernel, each assembled as prelude (+ quant helpers) + body.

use crate::error::{Error, Result};

/// One kernel's source. `quant` kernels bind `weights` and get the dequantization helpers.
pub struct Shader {
    pub name: &'static str,
    body: &'static str,
    quant: bool,
}

const PRELUDE: &str = include_str!("../shaders/prelude.wgsl");
const QUANT: &str = include_str!("../shaders/quant.wgsl");

impl Shader {
    /// The module text with the module-scope constants named in `defines` (`const NAME: u32 =
    /// ...;` lines) set to other values, for what override constants cannot set.
    pub fn source_with(&self, defines: &[(&str, u32)]) -> Result<String> {
        let mut s = self.source();
        for (name, value) in defines {
            let head = format!("const {name}: u32 = ");
            let start = s.find(&head).ok_or_else(|| Error::Gpu(format!("{}: no constant {name} to set", self.name)))?;
            let end =
                s[start..].find(';').map(|e| start + e).ok_or_else(|| Error::Gpu(format!("{}: constant {name} has no end", self.name)))?;
            s.replace_range(start..end, &format!("{head}{value}u"));
        }
        Ok(s)
    }

    /// The complete WGSL module text.
    pub fn source(&self) -> String {
        let mut s = String::with_capacity(PRELUDE.len() + QUANT.len() + self.body.len() + 2);
        s.push_str(PRELUDE);
        s.push('\n');
        if self.quant {
            s.push_str(QUANT);
            s.push('\n');
        }
        s.push_str(self.body);
        s
    }
}

macro_rules! shader {
    ($id:ident, $file:literal, $quant:expr) => {
        pub const $id: Shader = Shader { name: $file, body: include_str!(concat!("../shaders/", $file, ".wgsl")), quant: $quant };
    };
}

shader!(MATMUL, "matmul", true);
shader!(MATVEC_CPU, "matvec_cpu", true);
shader!(EMBED, "embed", true);
shader!(RMSNORM, "rmsnorm", false);
shader!(HEAD_NORM, "head_norm", false);
shader!(ROPE, "rope", false);
shader!(SWIGLU, "swiglu", false);
shader!(KV_WRITE, "kv_write", false);
shader!(ATTENTION, "attention", false);
shader!(ATTENTION_SPLIT, "attention_split", false);
shader!(ATTENTION_MERGE, "attention_merge", false);
shader!(SAMPLE, "sample", false);
shader!(TOPK, "topk", false);
shader!(CACHE_UPDATE, "cache_update", false);
shader!(SLOT_SCORE, "slot_score", false);
shader!(SLOT_ASSIGN, "slot_assign", false);
shader!(CONTROLLER_STEP, "controller_step", false);
shader!(CONTROLLER_SCORE, "controller_score", false);
shader!(REBUILD_RANK, "rebuild_rank", false);
shader!(REBUILD_MASK, "rebuild_mask", false);
shader!(REBUILD_ROWS, "rebuild_rows", false);
shader!(STAGED_MOVES, "staged_moves", false);
shader!(SELECT_MATRIX, "select_matrix", false);
shader!(SELECT_MATMUL, "select_matmul", false);
shader!(SELECT_STORE, "select_store", false);
shader!(QUEST_BOUNDS, "quest_bounds", false);
shader!(QUEST_SCORE, "quest_score", false);

/// Every kernel, for validation tests.
pub const ALL: &[&Shader] = &[
    &MATMUL,
    &MATVEC_CPU,
    &EMBED,
    &RMSNORM,
    &ROPE,
    &SWIGLU,
    &KV_WRITE,
    &ATTENTION,
    &ATTENTION_SPLIT,
    &ATTENTION_MERGE,
    &SAMPLE,
    &TOPK,
    &CACHE_UPDATE,
    &SLOT_SCORE,
    &SLOT_ASSIGN,
    &CONTROLLER_STEP,
    &CONTROLLER_SCORE,
    &REBUILD_RANK,
    &REBUILD_MASK,
    &REBUILD_ROWS,
    &STAGED_MOVES,
    &SELECT_MATRIX,
    &SELECT_MATMUL,
    &SELECT_STORE,
    &QUEST_BOUNDS,
    &QUEST_SCORE,
];
