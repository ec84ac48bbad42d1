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
//   5 Q5    blocks of 32 weights in 6 words: (f16 d | f16 m << 16), qh, then 16 bytes of nibbles;
//           w = d * (nibble + 16 * bit j of qh) + m, nibbles as Q4. (Q5_1 as in GGUF; Q5_0 is
//           loaded with m = -16 d.)
//   6 Q4K   super-blocks of 256 weights in 36 words, as in GGUF: (f16 d | f16 dmin << 16), 12
//           bytes of 6-bit scales and mins for 8 sub-blocks of 32, 128 bytes of nibbles; sub-block
//           s is the low (s even) or high (s odd) nibbles of bytes 32 (s / 2) .. + 31;
//           w = d * scale_s * q - dmin * min_s.
//   7 Q5K   as Q4K in 44 words, 32 bytes qh between the scales and the nibbles: bit s of
//           qh[l] is the fifth bit of weight l of sub-block s.
//   8 Q6K   super-blocks of 256 weights in 53 words: GGUF's 210 bytes (128 bytes of low
//           nibbles, 64 of 2-bit highs, 16 signed 8-bit scales, f16 d), 2 bytes of padding;
//           w = d * scale * (q - 32).
//
// The quantized formats lie on the GPU in one of two layouts (override constant LAYOUT;
// src/tensor.rs, Layout):
//   0 blocks one after another, as above;
//   1 row by row, each row padded to a whole 16 bytes: first the payload words of the row's
//     blocks (the quantized weights: the words from payload_first() on, payload_words() of
//     them), then the other words of each block (its header), in the block's order.
// Kernels address word c of block b as header_base(...) + c or payload_base(...) + c, whichever
// part c is in; both are the block's first word in layout 0.
override WTYPE: u32 = 0u;
override LAYOUT: u32 = 0u;

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

// The bits of each byte of w from `shift` on, under `mask`, as the vector's 4 lanes.
fn bit_fields(w: u32, shift: u32, mask: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> (NIBBLE_SHIFTS + vec4<u32>(shift))) & vec4<u32>(mask));
}

// The fifth bits (times 16) of weights j .. j + 3 of a Q5 block, from its qh word.
fn fifth_bits(qh: u32, j: u32) -> vec4<f32> {
    return 16.0 * vec4<f32>((vec4<u32>(qh) >> (vec4<u32>(j) + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u));
}

// Byte `i` of the words from `base` on.
fn byte_at(base: u32, i: u32) -> u32 {
    return (weights[base + i / 4u] >> ((i % 4u) * 8u)) & 255u;
}

// Scale and min (6 bits each) of sub-block s of the Q4K / Q5K super-block at word `base`.
fn k_scale_min(base: u32, s: u32) -> vec2<f32> {
    let sb = base + 1u;  // the 12 bytes of scales
    if s < 4u {
        return vec2<f32>(f32(byte_at(sb, s) & 63u), f32(byte_at(sb, s + 4u) & 63u));
    }
    let sc = (byte_at(sb, s + 4u) & 15u) | ((byte_at(sb, s - 4u) >> 6u) << 4u);
    let mn = (byte_at(sb, s + 4u) >> 4u) | ((byte_at(sb, s) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}

// Signed byte `i` of the words from `base` on.
fn signed_byte_at(base: u32, i: u32) -> f32 {
    return f32(bitcast<i32>(byte_at(base, i) << 24u) >> 24u);
}

// Words per block of each quantized WTYPE (3 ..= 8).
fn block_words() -> u32 {
    switch WTYPE {
        case 3u: { return 5u; }
        case 4u: { return 9u; }
        case 5u: { return 6u; }
        case 6u: { return 36u; }
        case 7u: { return 44u; }
        default: { return 53u; }
    }
}

// The first payload word of a block, and how many there are (WTYPE 3 ..= 8; the header is the
// words before them, or for Q6K after them).
fn payload_first() -> u32 {
    switch WTYPE {
        case 3u, 4u: { return 1u; }
        case 5u: { return 2u; }
        case 6u: { return 4u; }
        case 7u: { return 12u; }
        default: { return 0u; }
    }
}

fn payload_words() -> u32 {
    switch WTYPE {
        case 3u, 5u: { return 4u; }
        case 4u: { return 8u; }
        case 8u: { return 48u; }
        default: { return 32u; }
    }
}

// Words per row of nb blocks.
fn row_words(nb: u32) -> u32 {
    if LAYOUT == 0u {
        return nb * block_words();
    }
    return (nb * block_words() + 3u) & ~3u;
}

// Word c of block b of row `row` (nb blocks a row) is at payload_base(row, nb, b) + c for the
// block's payload words. (u32 arithmetic wraps, so the base may lie below zero.)
fn payload_base(row: u32, nb: u32, b: u32) -> u32 {
    if LAYOUT == 0u {
        return (row * nb + b) * block_words();
    }
    return row * row_words(nb) + b * payload_words() - payload_first();
}

// ... and at header_base(row, nb, b) + c for its header words.
fn header_base(row: u32, nb: u32, b: u32) -> u32 {
    if LAYOUT == 0u {
        return (row * nb + b) * block_words();
    }
    let header = block_words() - payload_words();
    let start = row * row_words(nb) + nb * payload_words() + b * header;
    return select(start, start - payload_words(), payload_first() == 0u);
}

// Whether the format's weights are scale · q + offset with an offset per block (Σ x then
// multiplies the offset once per block).
fn has_offset() -> bool {
    return WTYPE == 3u || WTYPE == 5u || WTYPE == 6u || WTYPE == 7u;
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
    if WTYPE >= 6u {
        // K-quants: group j of the super-block, weights 8 j .. 8 j + 7 of its 256.
        let nb = k / 256u;
        let b = g / 32u;
        let j = g % 32u;
        let hb = header_base(row, nb, b);
        let pb = payload_base(row, nb, b);
        if WTYPE == 8u {
            let h = j / 16u;          // half of 128 weights
            let t = (j % 16u) / 4u;   // quarter of 32
            let l = (j % 4u) * 8u;    // first weight in the quarter
            let lo = pb + h * 16u + (t % 2u) * 8u + l / 4u;
            let hi = pb + 32u + h * 8u + l / 4u;
            let scale = d_scale(hb, unpack2x16float(weights[hb + 52u]).x, 192u + h * 8u + t * 2u + l / 16u);
            let q0 = bit_fields(weights[lo], (t / 2u) * 4u, 15u) + 16.0 * bit_fields(weights[hi], t * 2u, 3u) - vec4<f32>(32.0);
            let q1 = bit_fields(weights[lo + 1u], (t / 2u) * 4u, 15u) + 16.0 * bit_fields(weights[hi + 1u], t * 2u, 3u) - vec4<f32>(32.0);
            return W8(scale * q0, scale * q1);
        }
        let s = j / 4u;           // sub-block of 32
        let l = (j % 4u) * 8u;    // first weight in it
        let d = unpack2x16float(weights[hb]);
        let sm = k_scale_min(hb, s);
        let scale = d.x * sm.x;
        let offset = d.y * sm.y;
        let qs = pb + select(4u, 12u, WTYPE == 7u) + (s / 2u) * 8u + l / 4u;
        var q0 = nibbles(weights[qs], (s % 2u) * 4u);
        var q1 = nibbles(weights[qs + 1u], (s % 2u) * 4u);
        if WTYPE == 7u {
            q0 += 16.0 * bit_fields(weights[hb + 4u + l / 4u], s, 1u);
            q1 += 16.0 * bit_fields(weights[hb + 5u + l / 4u], s, 1u);
        }
        return W8(scale * q0 - vec4<f32>(offset), scale * q1 - vec4<f32>(offset));
    }
    let nb = k / 32u;
    let b = g / 4u;
    let part = g % 4u;
    let hb = header_base(row, nb, b);
    let pb = payload_base(row, nb, b);
    if WTYPE == 5u {
        let dm = unpack2x16float(weights[hb]);
        let qh = weights[hb + 1u];
        let shift = (part >> 1u) * 4u;
        let w0 = weights[pb + 2u + (part & 1u) * 2u];
        let w1 = weights[pb + 3u + (part & 1u) * 2u];
        return W8(
            dm.x * (nibbles(w0, shift) + fifth_bits(qh, part * 8u)) + vec4<f32>(dm.y),
            dm.x * (nibbles(w1, shift) + fifth_bits(qh, part * 8u + 4u)) + vec4<f32>(dm.y),
        );
    }
    if WTYPE == 3u {
        let dm = unpack2x16float(weights[hb]);
        let shift = (part >> 1u) * 4u;
        let w0 = weights[pb + 1u + (part & 1u) * 2u];
        let w1 = weights[pb + 2u + (part & 1u) * 2u];
        return W8(dm.x * nibbles(w0, shift) + vec4<f32>(dm.y), dm.x * nibbles(w1, shift) + vec4<f32>(dm.y));
    }
    let d = unpack2x16float(weights[hb]).x;
    return W8(d * signed_bytes(weights[pb + 1u + part * 2u]), d * signed_bytes(weights[pb + 2u + part * 2u]));
}

// d times the signed 8-bit scale at byte `i` of the Q6K super-block at word `base`.
fn d_scale(base: u32, d: f32, i: u32) -> f32 {
    return d * signed_byte_at(base, i);
}

fn dot8(a: W8, b: W8) -> f32 {
    return dot(a.lo, b.lo) + dot(a.hi, b.hi);
}
