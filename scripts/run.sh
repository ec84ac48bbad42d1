#!/usr/bin/env bash
# The main job: build adore, fetch and verify the default model (SmolLM2-135M-Instruct),
# and generate a continuation on the GPU (or on Mesa's software Vulkan without one).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p adore-cli
exec ./target/release/adore generate --prompt "${PROMPT:-The capital of France is}" --max-tokens "${MAX_TOKENS:-32}" "$@"
