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
    /// ...;` lines) set to other values, for what override constants cannot set, and its
    /// unrolled loops written out (see [`unroll`]).
    pub fn source_with(&self, defines: &[(&str, u32)]) -> Result<String> {
        let mut s = self.assembled();
        for (name, value) in defines {
            let head = format!("const {name}: u32 = ");
            let start = s.find(&head).ok_or_else(|| Error::Gpu(format!("{}: no constant {name} to set", self.name)))?;
            let end =
                s[start..].find(';').map(|e| start + e).ok_or_else(|| Error::Gpu(format!("{}: constant {name} has no end", self.name)))?;
            s.replace_range(start..end, &format!("{head}{value}u"));
        }
        unroll(&s).map_err(|e| Error::Gpu(format!("{}: {e}", self.name)))
    }

    /// The complete WGSL module text with its constants as written.
    pub fn source(&self) -> String {
        // Every shipped kernel's default text expands (tests/kernels.rs compiles them all).
        self.source_with(&[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Prelude, helpers and body, before unrolling.
    fn assembled(&self) -> String {
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

/// Writes out the loops marked for unrolling: the lines between `// unroll NAME BOUND` and
/// `// end unroll` are repeated for NAME = 0 .. BOUND, with the word NAME in them replaced by
/// the value (`3u`). BOUND is a number or a module-scope `const X: u32 = <number>u;` of the text
/// (after its defines are set). Blocks nest.
///
/// Why: a CPU-backed adapter (lavapipe) keeps an array indexed by a loop counter in memory and
/// reads it lane by lane; with the indices constant the array lives in vector registers. A
/// kernel whose lanes each hold a few dozen vectors (attention's queries and accumulators) ran
/// about three times faster unrolled (`examples/kernel_bench`). GPU compilers unroll such loops
/// themselves.
pub fn unroll(source: &str) -> std::result::Result<String, String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < lines.len() {
        i = expand(&lines, i, source, &[], &mut out)?;
    }
    Ok(out)
}

/// Writes line `i` (or the unroll block that starts there) with the names bound so far
/// substituted; returns the index after it.
fn expand(lines: &[&str], i: usize, source: &str, bound: &[(String, u32)], out: &mut String) -> std::result::Result<usize, String> {
    let Some(spec) = lines[i].trim().strip_prefix("// unroll ") else {
        if lines[i].trim() == "// end unroll" {
            return Err(format!("line {}: `// end unroll` without `// unroll`", i + 1));
        }
        out.push_str(&substitute(lines[i], bound));
        out.push('\n');
        return Ok(i + 1);
    };
    let mut words = spec.split_whitespace();
    let (Some(name), Some(limit), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("line {}: `// unroll NAME BOUND` expected", i + 1));
    };
    let count = limit
        .parse::<u32>()
        .ok()
        .or_else(|| const_value(source, limit))
        .ok_or_else(|| format!("line {}: unroll bound {limit} is neither a number nor a `const {limit}: u32 = <number>u;`", i + 1))?;
    // The block's end: the matching `// end unroll`.
    let (mut depth, mut end) = (0usize, None);
    for (j, line) in lines.iter().enumerate().skip(i + 1) {
        match line.trim() {
            l if l.starts_with("// unroll ") => depth += 1,
            "// end unroll" if depth == 0 => {
                end = Some(j);
                break;
            }
            "// end unroll" => depth -= 1,
            _ => {}
        }
    }
    let end = end.ok_or_else(|| format!("line {}: `// unroll` without `// end unroll`", i + 1))?;
    for v in 0..count {
        let mut inner: Vec<(String, u32)> = bound.to_vec();
        inner.push((name.to_string(), v));
        let mut j = i + 1;
        while j < end {
            j = expand(lines, j, source, &inner, out)?;
        }
    }
    Ok(end + 1)
}

/// The value of `const NAME: u32 = <number>u;` in the text.
fn const_value(source: &str, name: &str) -> Option<u32> {
    let head = format!("const {name}: u32 = ");
    let start = source.find(&head)? + head.len();
    let end = start + source[start..].find(';')?;
    source[start..end].trim().trim_end_matches('u').parse().ok()
}

/// `line` with each bound name, as a whole word, replaced by its value.
fn substitute(line: &str, bound: &[(String, u32)]) -> String {
    let mut s = line.to_string();
    for (name, value) in bound {
        let mut out = String::with_capacity(s.len());
        let mut rest = s.as_str();
        while let Some(at) = rest.find(name.as_str()) {
            let before = rest[..at].chars().next_back();
            let after = rest[at + name.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            out.push_str(&rest[..at]);
            if word(before) || word(after) {
                out.push_str(name);
            } else {
                out.push_str(&format!("{value}u"));
            }
            rest = &rest[at + name.len()..];
        }
        out.push_str(rest);
        s = out;
    }
    s
}

macro_rules! shader {
    ($id:ident, $file:literal, $helpers:expr) => {
        pub const $id: Shader = Shader { name: $file, body: include_str!(concat!("../shaders/", $file, ".wgsl")), helpers: $helpers };
    };
}

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

#[cfg(test)]
mod tests {
    use super::unroll;

    #[test]
    fn unroll_writes_out_nested_blocks_by_whole_words() {
        let src = "const N: u32 = 2u;\n// unroll a N\nx[a] = 0;\n// unroll b 3\ny[a * 3u + b] = ab + b_c + a;\n// end unroll\n// end unroll\ndone";
        let want = "const N: u32 = 2u;\nx[0u] = 0;\ny[0u * 3u + 0u] = ab + b_c + 0u;\ny[0u * 3u + 1u] = ab + b_c + 0u;\ny[0u * 3u + 2u] = ab + b_c + 0u;\nx[1u] = 0;\ny[1u * 3u + 0u] = ab + b_c + 1u;\ny[1u * 3u + 1u] = ab + b_c + 1u;\ny[1u * 3u + 2u] = ab + b_c + 1u;\ndone\n";
        assert_eq!(unroll(src).unwrap(), want);
        assert_eq!(unroll("// unroll a 0\nx;\n// end unroll\n").unwrap(), "");
        for bad in ["// unroll a 2\nx;", "x;\n// end unroll", "// unroll a M\nx;\n// end unroll", "// unroll a\nx;\n// end unroll"] {
            assert!(unroll(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
