#!/usr/bin/env bash
# The prepared GPU check: kernels against their CPU references on the GPU, each kernel timed
# alone, then full, sink and adore decode speed from 256 to 8178 tokens with the per-kernel
# profile, as JSON and markdown.
#
#   scripts/gpu-bench.sh prepare      # here: build, and gather what the GPU machine needs in .gpu/
#   scripts/gpu-bench.sh run [DIR]    # there (DIR: where results go, default $OUT or gpu-results/)
#
# The GPU machine needs no toolchain and no network: `prepare` copies the release binaries (the
# CLI, the shaped-model writer, the kernel test binary) and the Vulkan loader's Debian packages
# into .gpu/. The default model is not carried; `run` writes a model of its exact shape with
# random weights (examples/shaped_model.rs), so every kernel does the real model's work, and fits
# a key index to it for adore.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
contexts=${CONTEXTS:-256,1024,2048,4096,8178}

case "$mode" in
prepare)
    cargo build --release --locked -p adore-cli
    cargo build --release --locked --example shaped_model --example kernel_bench
    kernels=$(cargo test --release --locked --test kernels --no-run 2>&1 | sed -n 's/.*Executable tests\/kernels.rs (\(.*\))/\1/p' | tail -n 1)
    [ -n "$kernels" ] || { echo "gpu-bench: could not find the kernel test binary" >&2; exit 1; }
    rm -rf .gpu && mkdir -p .gpu/debs
    cp target/release/adore target/release/examples/shaped_model target/release/examples/kernel_bench .gpu/
    cp "$kernels" .gpu/kernels
    # The Vulkan loader, for a machine whose image has the GPU driver but no loader.
    lists=$(mktemp -d)
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
    mkdir -p "$lists/partial"
    apt-get "${o[@]}" update -qq
    (cd .gpu/debs && apt-get "${o[@]}" download libvulkan1 >/dev/null)
    du -sh .gpu
    echo "gpu-bench: ready; on the GPU machine run scripts/gpu-bench.sh run, carrying .gpu" >&2
    ;;
run)
    out=${2:-${OUT:-gpu-results}}
    mkdir -p "$out"
    [ -x .gpu/adore ] || { echo "gpu-bench: .gpu/ is missing: run scripts/gpu-bench.sh prepare first, and carry .gpu" >&2; exit 1; }
    if ! ldconfig -p | grep -q libvulkan; then
        for f in .gpu/debs/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
        if [ -f "$icd" ] && [ -z "${VK_DRIVER_FILES:-}" ]; then export VK_DRIVER_FILES=$icd; fi
    done
    export WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
    nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv 2>&1 | tee "$out/gpu.txt" || true
    # Kernels against their CPU references, on this adapter (GPU-shaped kernels).
    .gpu/kernels --test-threads 1 2>&1 | tee "$out/kernels.txt"
    # Each kernel alone: the one-row products over weights in blocks (the old matrix-vector
    # kernel) and in rows (16-byte walks), with subgroup reductions and without.
    .gpu/kernel_bench 1 2>&1 | tee "$out/kernel-bench.txt"
    .gpu/kernel_bench 1 no-subgroups 2>&1 | tee "$out/kernel-bench-no-subgroups.txt"
    model=/tmp/adore-shaped.gguf
    .gpu/shaped_model "$model"
    .gpu/adore index fit --model "$model" --text README.md --text ARCHITECTURE.md --tokens 1024 --rank 16 --out /tmp/adore-shaped-index.safetensors 2>&1 | tail -n 3
    .gpu/adore bench --model "$model" --index /tmp/adore-shaped-index.safetensors --policies full,sink,adore --budget 128 \
        --contexts "$contexts" --decode-tokens 16 --repeats 5 --profile --json "$out/bench.json" 2>&1 | tee "$out/bench.md"
    # The same with an f16 KV cache: half the K/V bytes a step reads.
    .gpu/adore bench --model "$model" --index /tmp/adore-shaped-index.safetensors --policies full,adore --budget 128 --kv-cache f16 \
        --contexts "$contexts" --decode-tokens 16 --repeats 5 --profile --json "$out/bench-f16.json" 2>&1 | tee "$out/bench-f16.md"
    # Full attention's decode with the products' workgroup-memory reductions instead of subgroups.
    .gpu/adore bench --model "$model" --policies full --no-subgroups --contexts 256,4096 --decode-tokens 16 --repeats 5 \
        --profile --json "$out/bench-no-subgroups.json" 2>&1 | tee "$out/bench-no-subgroups.md"
    echo "gpu-bench: results in $out" >&2
    ;;
*)
    echo "usage: scripts/gpu-bench.sh prepare | run [DIR]" >&2
    exit 2
    ;;
esac
