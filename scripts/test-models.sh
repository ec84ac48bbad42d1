#!/usr/bin/env bash
# The long model checks, apart from the test command: the Qwen2.5-Coder files (491 MB and
# 1.1 GB, fetched once into the cache) against llama.cpp's references in tests/llama-cpp, and
# the 1.5B model (its 191 MB LM head split across bindings) generating on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
scripts/fetch-data.sh
cargo build --release --locked -p adore-cli
cargo test --release --locked --test llama_cpp -- --ignored --nocapture "$@"
./target/release/adore generate --model qwen2.5-coder-1.5b --prompt "def is_prime(n):" --max-tokens 32 --temperature 0
