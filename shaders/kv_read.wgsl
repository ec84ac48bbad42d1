// kv_read.wgsl: reading a KV cache's rows, for kernels that bind `k_cache` and `v_cache` as
// array<vec2<u32>> (capacity, n_kv_heads, head_dim): f32 elements, or with KV_HALF f16 pairs
// packed in a u32 (as pack2x16float writes them), half the bytes.

const KV_HALF: u32 = 0u;  // 1: K and V hold f16

// The vec4 `e` of K: f32 in two vec2 words, or f16 in one.
fn key4(e: u32) -> vec4<f32> {
    if KV_HALF != 0u {
        let w = k_cache[e];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return vec4<f32>(bitcast<vec2<f32>>(k_cache[2u * e]), bitcast<vec2<f32>>(k_cache[2u * e + 1u]));
}

// The vec4 `e` of V, as key4.
fn value4(e: u32) -> vec4<f32> {
    if KV_HALF != 0u {
        let w = v_cache[e];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    return vec4<f32>(bitcast<vec2<f32>>(v_cache[2u * e]), bitcast<vec2<f32>>(v_cache[2u * e + 1u]));
}
