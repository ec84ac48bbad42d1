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
    /// ...;` lines) set to other values, for what override constants cannot set; then its
    /// `unroll` blocks written out (see [`unroll`]).
    pub fn source_with(&self, defines: &[(&str, u32)]) -> Result<String> {
        let mut s = self.text();
        for (name, value) in defines {
            let head = format!("const {name}: u32 = ");
            let start = s.find(&head).ok_or_else(|| Error::Gpu(format!("{}: no constant {name} to set", self.name)))?;
            let end =
                s[start..].find(';').map(|e| start + e).ok_or_else(|| Error::Gpu(format!("{}: constant {name} has no end", self.name)))?;
            s.replace_range(start..end, &format!("{head}{value}u"));
        }
        unroll(self.name, &s)
    }

    /// The complete WGSL module text, with the constants as the file sets them.
    pub fn source(&self) -> String {
        // The shipped sources' blocks are well formed (tests/kernels.rs compiles every one).
        self.source_with(&[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn text(&self) -> String {
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

/// Writes out the blocks between a line `// unroll VAR COUNT` and its `// end unroll`: COUNT
/// copies, `{VAR}` replaced by 0, 1, ... in each (COUNT is a number or a module constant `const
/// COUNT: u32 = Nu;`); blocks nest. llvmpipe keeps a private array indexed in a loop in memory,
/// read lane by lane, where separate variables stay in registers: a kernel that loops over a
/// few heads or vectors per lane is written with these instead.
fn unroll(shader: &str, text: &str) -> Result<String> {
    let constant = |name: &str| -> Option<usize> {
        let head = format!("const {name}: u32 = ");
        let at = text.find(&head)? + head.len();
        text[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::with_capacity(text.len());
    expand(shader, &lines, &constant, &mut out)?;
    Ok(out)
}

fn expand(shader: &str, lines: &[&str], constant: &dyn Fn(&str) -> Option<usize>, out: &mut String) -> Result<()> {
    let err = |m: String| Error::Gpu(format!("{shader}: {m}"));
    let mut i = 0;
    while i < lines.len() {
        let Some(rest) = lines[i].trim().strip_prefix("// unroll ") else {
            out.push_str(lines[i]);
            out.push('\n');
            i += 1;
            continue;
        };
        let bad = || err(format!("`{}`: not `// unroll VAR COUNT` with COUNT a number or a constant", lines[i].trim()));
        let (var, count) = rest.split_once(' ').ok_or_else(bad)?;
        let n = count.trim().parse().ok().or_else(|| constant(count.trim())).ok_or_else(bad)?;
        let mut depth = 1;
        let mut end = i + 1;
        while end < lines.len() {
            let t = lines[end].trim();
            depth += usize::from(t.starts_with("// unroll "));
            depth -= usize::from(t == "// end unroll");
            if depth == 0 {
                break;
            }
            end += 1;
        }
        if depth != 0 {
            return Err(err(format!("`{}` has no `// end unroll`", lines[i].trim())));
        }
        let key = format!("{{{var}}}");
        for k in 0..n {
            let copy: Vec<String> = lines[i + 1..end].iter().map(|l| l.replace(&key, &k.to_string())).collect();
            expand(shader, &copy.iter().map(String::as_str).collect::<Vec<_>>(), constant, out)?;
        }
        i = end + 1;
    }
    Ok(())
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
shader!(SHORT_ROWS, "short_rows", "");
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
    &SHORT_ROWS,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unroll_writes_out_nested_blocks() {
        let text = "const N: u32 = 2u;\n// unroll a N\nx{a};\n  // unroll b 3\n  y{a}{b};\n  // end unroll\n// end unroll\nz;";
        assert_eq!(unroll("t", text).unwrap(), "const N: u32 = 2u;\nx0;\n  y00;\n  y01;\n  y02;\nx1;\n  y10;\n  y11;\n  y12;\nz;\n");
        assert!(unroll("t", "// unroll a M\nx;\n// end unroll").unwrap_err().to_string().contains("// unroll a M"));
        assert!(unroll("t", "// unroll a 2\nx;").unwrap_err().to_string().contains("no `// end unroll`"));
    }
}
