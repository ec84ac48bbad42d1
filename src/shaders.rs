//! The WGSL sources, one file per kernel, each assembled as prelude (+ shared helpers) + body.

use crate::error::{Error, Result};

/// One kernel's source: the prelude, the helpers it shares with other kernels (those of quant.wgsl
/// for kernels that bind `weights`, of kv_read.wgsl for those that bind `k_cache` and `v_cache`),
/// its body.
pub struct Shader {
    pub name: &'static str,
    body: &'static str,
    helpers: &'static str,
}

const PRELUDE: &str = include_str!("../shaders/prelude.wgsl");
const QUANT: &str = include_str!("../shaders/quant.wgsl");
const KV_READ: &str = include_str!("../shaders/kv_read.wgsl");

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
        let mut s = String::with_capacity(PRELUDE.len() + self.helpers.len() + self.body.len() + 2);
        s.push_str(PRELUDE);
        s.push('\n');
        if !self.helpers.is_empty() {
            s.push_str(self.helpers);
            s.push('\n');
        }
        s.push_str(self.body);
        s
    }
}

macro_rules! shader {
    ($id:ident, $file:literal, $helpers:expr) => {
        pub const $id: Shader = Shader { name: $file, body: include_str!(concat!("../shaders/", $file, ".wgsl")), helpers: $helpers };
    };
}

/// matmul.wgsl with `matvec_wide_sg` (matvec_sg.wgsl), for adapters with subgroups. Natively
/// only: naga takes subgroup operations without a directive (and refuses `enable subgroups;`),
/// where browsers require it.
pub const MATMUL_SG: Shader = Shader {
    name: "matmul_sg",
    body: concat!(include_str!("../shaders/matmul.wgsl"), "\n", include_str!("../shaders/matvec_sg.wgsl")),
    helpers: QUANT,
};

shader!(MATMUL, "matmul", QUANT);
shader!(MATVEC_CPU, "matvec_cpu", QUANT);
shader!(EMBED, "embed", QUANT);
shader!(RMSNORM, "rmsnorm", "");
shader!(HEAD_NORM, "head_norm", "");
shader!(ROPE, "rope", "");
shader!(SWIGLU, "swiglu", "");
shader!(KV_WRITE, "kv_write", "");
shader!(ATTENTION, "attention", KV_READ);
shader!(ATTENTION_SPLIT, "attention_split", KV_READ);
shader!(ATTENTION_MERGE, "attention_merge", "");
shader!(KEY_LOGITS, "key_logits", "");
shader!(KEY_SCORE, "key_score", "");
shader!(SAMPLE, "sample", "");
shader!(TOPK, "topk", "");
shader!(CACHE_UPDATE, "cache_update", "");
shader!(SLOT_SCORE, "slot_score", "");
shader!(SLOT_ASSIGN, "slot_assign", "");
shader!(CONTROLLER_STEP, "controller_step", "");
shader!(CONTROLLER_SCORE, "controller_score", "");
shader!(REBUILD_RANK, "rebuild_rank", "");
shader!(REBUILD_MASK, "rebuild_mask", "");
shader!(REBUILD_ROWS, "rebuild_rows", "");
shader!(STAGED_MOVES, "staged_moves", "");
shader!(SELECT_MATRIX, "select_matrix", "");
shader!(SELECT_MATMUL, "select_matmul", "");
shader!(SELECT_STORE, "select_store", "");
shader!(QUEST_BOUNDS, "quest_bounds", "");
shader!(QUEST_SCORE, "quest_score", "");

/// Every kernel, for validation tests.
pub const ALL: &[&Shader] = &[
    &MATMUL,
    &MATMUL_SG,
    &MATVEC_CPU,
    &EMBED,
    &RMSNORM,
    &ROPE,
    &SWIGLU,
    &KV_WRITE,
    &ATTENTION,
    &ATTENTION_SPLIT,
    &ATTENTION_MERGE,
    &KEY_LOGITS,
    &KEY_SCORE,
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
