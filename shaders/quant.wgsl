// quant.wgsl: reading weights in their file's format (prepended to kernels that bind `weights`).
//
// Formats on the GPU, as array<u32> words, selected by the override constant WTYPE:
//   0 F32   one word per weight
//   1 F16   two weights per word (low half first), row-major over the whole tensor
//   2 BF16  as F16, bfloat16 halves
//   3 Q4    blocks of 32 weights in 5 words: (f16 d | f16 m << 16), then 16 bytes of nibbles;
//           w = d * q + m; weights 0..15 are the low nibbles of bytes 0..15, 16..31 the high ones.
//           (Q4_1 as in GGUF; Q4_0 is loaded with m = -8 d.)
//   4 Q8    blocks of 32 weights in 9 words: (f16 d), then 32 signed bytes; w = d * q.
override WTYPE: u32 = 0u;

// Eight consecutive weights.
struct W8 {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// Both 16-bit floats of one word (F16 or BF16), low half first.
fn halves(w: u32) -> vec2<f32> {
    if WTYPE == 1u {
        return unpack2x16float(w);
    }
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

fn half_at(e: u32) -> f32 {
    return halves(weights[e >> 1u])[e & 1u];
}

fn float_at(row: u32, kk: u32, k: u32) -> f32 {
    if kk >= k {
        return 0.0;
    }
    let e = row * k + kk;
    if WTYPE == 0u {
        return bitcast<f32>(weights[e]);
    }
    return half_at(e);
}

const NIBBLE_SHIFTS: vec4<u32> = vec4<u32>(0u, 8u, 16u, 24u);
const BYTE_SHIFTS: vec4<u32> = vec4<u32>(24u, 16u, 8u, 0u);

fn nibbles(w: u32, shift: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> (NIBBLE_SHIFTS + vec4<u32>(shift))) & vec4<u32>(15u));
}

fn signed_bytes(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<i32>(bitcast<i32>(w)) << BYTE_SHIFTS) >> vec4<u32>(24u));
}

// Weights k = 8 g .. 8 g + 7 of row `row` of a (rows, k) matrix; zero past the row's end.
fn dequant8(row: u32, g: u32, k: u32) -> W8 {
    let k0 = g * 8u;
    if WTYPE <= 2u {
        return W8(
            vec4<f32>(float_at(row, k0, k), float_at(row, k0 + 1u, k), float_at(row, k0 + 2u, k), float_at(row, k0 + 3u, k)),
            vec4<f32>(float_at(row, k0 + 4u, k), float_at(row, k0 + 5u, k), float_at(row, k0 + 6u, k), float_at(row, k0 + 7u, k)),
        );
    }
    let nb = k / 32u;
    let b = g / 4u;
    let part = g % 4u;
    if WTYPE == 3u {
        let base = (row * nb + b) * 5u;
        let dm = unpack2x16float(weights[base]);
        let shift = (part >> 1u) * 4u;
        let w0 = weights[base + 1u + (part & 1u) * 2u];
        let w1 = weights[base + 2u + (part & 1u) * 2u];
        return W8(dm.x * nibbles(w0, shift) + vec4<f32>(dm.y), dm.x * nibbles(w1, shift) + vec4<f32>(dm.y));
    }
    let base = (row * nb + b) * 9u;
    let d = unpack2x16float(weights[base]).x;
    return W8(d * signed_bytes(weights[base + 1u + part * 2u]), d * signed_bytes(weights[base + 2u + part * 2u]));
}

fn dot8(a: W8, b: W8) -> f32 {
    return dot(a.lo, b.lo) + dot(a.hi, b.hi);
}
