#!/usr/bin/env bash
# Installs what adore needs on a Debian machine: a Vulkan driver (Mesa's lavapipe works
# without a GPU) and the Rust toolchain check. Run as root to install; otherwise it says what
# is missing. Sourced by the other scripts, which call ensure_packages for what they add.
set -euo pipefail

# ensure_packages PKG...: installs the Debian packages that are missing (as root), or stops
# with the command that would.
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: missing Debian packages: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
}

command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing: install Rust (https://rustup.rs or apt-get install cargo)" >&2; exit 1; }
base=(mesa-vulkan-drivers libvulkan1 python3 python3-pip)
command -v cc >/dev/null 2>&1 || base+=(build-essential)
ensure_packages "${base[@]}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
