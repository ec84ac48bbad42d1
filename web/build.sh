#!/usr/bin/env bash
# Builds the browser engine into web/pkg, the npm package adore-webgpu: the library compiled to
# wasm32 (std built from source with Debian's rustc-web, since no prebuilt wasm32 standard
# library can be downloaded here), the wasm-bindgen JS glue (the CLI pinned to the version in
# Cargo.lock) and the JS wrapper, types and README from web/src.
# Run as root to install the Debian packages it needs; otherwise it says what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/setup.sh
ensure_packages rustc-web rust-web-src lld-22

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$version" ]; then
  echo "build-web: installing wasm-bindgen-cli $version (the version in Cargo.lock; a few minutes, once)" >&2
  cargo install --quiet wasm-bindgen-cli --version "$version" --no-default-features
fi

echo "build-web: compiling the engine for wasm32" >&2
RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 /usr/bin/cargo rustc --quiet --locked --release --lib --crate-type cdylib \
  -Zbuild-std=std,panic_abort --target wasm32-unknown-unknown --target-dir target/wasm -p adore --no-default-features

out=web/pkg
rm -rf "$out"
wasm-bindgen --target web --out-dir "$out" target/wasm/wasm32-unknown-unknown/release/adore.wasm
cp web/src/*.js web/src/index.d.ts web/src/package.json web/src/README.md "$out/"
echo "build-web: $out ($(du -k "$out/adore_bg.wasm" | cut -f1) KiB of wasm)" >&2
