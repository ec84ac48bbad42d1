// prelude.wgsl: helpers and structs shared by every adore kernel (prepended to each shader).

// Per-step values that change between submissions of the same recorded plan.
struct Step {
    n_rows: u32,   // rows (tokens) processed in this step
    n_slots: u32,  // KV slots in use (attention scans slots 0..n_slots)
    counter: u32,  // sampling counter: one random draw per step
    n_seen: u32,   // tokens in the sequence after this step
    n_new: u32,    // rows 0..n_new are new tokens; rows n_new..n_rows rebuild released ones
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// The ADORE controller's layout in its packed weight buffer (controller kernels).
struct ControllerParams {
    d_c: u32,
    hidden: u32,
    off_proj: u32,    // offsets into the packed weights (f32 elements)
    off_w_ih: u32,
    off_w_hh: u32,
    off_b_ih: u32,
    off_b_hh: u32,
    off_w_k: u32,
    off_w_q: u32,
    off_bias: u32,    // bias by distance, max_distance + 1 values
    max_distance: u32,
    capacity: u32,    // slots in the KV cache
    input_norm: u32,  // 1: each input row is divided by its root mean square (residual-stream input)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// Scores below this are masked out (WGSL has no infinity literals).
const MASKED: f32 = -1.0e30;

fn silu(v: f32) -> f32 {
    return v / (1.0 + exp(-v));
}

// GELU, tanh approximation (Gemma's feed-forward gate); the argument is clamped where tanh is
// ±1 in f32 anyway, so that no implementation of tanh overflows.
fn gelu_tanh(v: f32) -> f32 {
    let t = clamp(0.7978845608 * (v + 0.044715 * v * v * v), -15.0, 15.0);
    return 0.5 * v * (1.0 + tanh(t));
}

// The gated feed-forward's activation of the gate: 0 SiLU (SwiGLU), 1 GELU-tanh (GeGLU).
override ACT: u32 = 0u;

fn gate_act(v: f32) -> f32 {
    if ACT == 1u {
        return gelu_tanh(v);
    }
    return silu(v);
}

// Maps an f32 to a u32 with the same ordering (larger float -> larger key).
fn order_key(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    if (b & 0x80000000u) != 0u {
        return ~b;
    }
    return b | 0x80000000u;
}

// PCG hash: a well-mixed 32-bit value from a 32-bit input.
fn pcg_hash(v: u32) -> u32 {
    let state = v * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

// Uniform draw in [0, 1) from (seed, counter), 24 bits of resolution.
fn uniform01(seed: u32, counter: u32) -> f32 {
    return f32(pcg_hash(seed ^ pcg_hash(counter)) >> 8u) / 16777216.0;
}

// Reductions over a workgroup of 256 invocations, for the single-workgroup selection kernels.
var<workgroup> wg_red_u32: array<u32, 256>;

// Sum of v over the workgroup (every invocation gets it).
fn wg_total_u32(lid: u32, v: u32) -> u32 {
    wg_red_u32[lid] = v;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if lid < w {
            wg_red_u32[lid] += wg_red_u32[lid + w];
        }
        workgroupBarrier();
    }
    // A uniform load, so that callers may branch on the total around barriers (browsers'
    // uniformity analysis requires it).
    let t = workgroupUniformLoad(&wg_red_u32[0]);
    workgroupBarrier();
    return t;
}

// Exclusive prefix sum of v in invocation order.
fn wg_prefix_u32(lid: u32, v: u32) -> u32 {
    wg_red_u32[lid] = v;
    workgroupBarrier();
    if lid == 0u {
        var run = 0u;
        for (var t = 0u; t < 256u; t++) {
            let x = wg_red_u32[t];
            wg_red_u32[t] = run;
            run += x;
        }
    }
    workgroupBarrier();
    let out = wg_red_u32[lid];
    workgroupBarrier();
    return out;
}
