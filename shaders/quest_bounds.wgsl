// quest_bounds.wgsl: Quest's page summaries (Tang et al., 2024) for one layer: for each page of
// PAGE consecutive slots that holds one of this step's rows, the elementwise minimum and maximum
// of the keys in its valid slots:
//   bounds[page, 0, i] = min_j k_cache[j, i],  bounds[page, 1, i] = max_j k_cache[j, i].
// For caches that keep every token, where the step's rows take consecutive slots, so the pages
// they touch run from slots[0] / PAGE to slots[n_rows - 1] / PAGE.
// Invocation = one feature of one page; dispatch (ceil(kv_dim / 64), pages one step can touch, 1).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    capacity: u32,
}

@group(0) @binding(0) var<storage, read> k_cache: array<u32>;        // (capacity, kv_dim) f32 or f16 (HALF), after RoPE
@group(0) @binding(1) var<storage, read> slot_pos: array<u32>;       // (capacity) position or INVALID
@group(0) @binding(2) var<storage, read> slots: array<u32>;          // (rows) this step's slots
@group(0) @binding(3) var<storage, read_write> bounds: array<f32>;   // (pages, 2, kv_dim)
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<uniform> step: Step;

const PAGE: u32 = 16u;
const INVALID: u32 = 0xffffffffu;
const HALF: u32 = 0u;  // 1: the cache holds f16 pairs packed in a u32

// Element e of the cache.
fn key_at(e: u32) -> f32 {
    if HALF != 0u {
        return unpack2x16float(k_cache[e / 2u])[e % 2u];
    }
    return bitcast<f32>(k_cache[e]);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kv_dim = p.n_kv_heads * p.head_dim;
    let i = gid.x;
    if i >= kv_dim || step.n_rows == 0u {
        return;
    }
    let page = slots[0] / PAGE + gid.y;
    if page > slots[step.n_rows - 1u] / PAGE || page * PAGE >= p.capacity {
        return;
    }
    var lo = 3.0e38;
    var hi = -3.0e38;
    for (var j = page * PAGE; j < min(page * PAGE + PAGE, p.capacity); j++) {
        if slot_pos[j] != INVALID {
            let x = key_at(j * kv_dim + i);
            lo = min(lo, x);
            hi = max(hi, x);
        }
    }
    bounds[page * 2u * kv_dim + i] = lo;
    bounds[(page * 2u + 1u) * kv_dim + i] = hi;
}
