#!/usr/bin/env bash
# A long model check: a five-digit pass key hidden in about 1,200 tokens of filler and asked for
# at the end, five prompts (keys and depths fixed here), greedy, on the default model. Prints,
# per policy at budget M (default 128), how many of the five answers contain the key.
# Usage: scripts/passkey.sh [POLICY ...]   (default: full sink adore; BUDGET=M to change M;
# ARGS="--candidates 256" adds options to every run but full's; FILLER=FILE takes the filler's
# 60 lines from FILE's non-empty lines, in order, instead of one sentence repeated; KEYS="..."
# and DEPTHS="..." (five each) change the keys and the lines they follow)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release --locked -p adore-cli >&2
budget=${BUDGET:-128}
policies=("$@")
[ ${#policies[@]} -eq 0 ] && policies=(full sink adore)
lines=()
if [ -n "${FILLER:-}" ]; then
  mapfile -t lines < <(grep -v '^[[:space:]]*$' "$FILLER" | head -n 60)
  [ ${#lines[@]} -eq 60 ] || { echo "passkey: $FILLER has ${#lines[@]} non-empty lines, 60 needed" >&2; exit 1; }
else
  for ((i = 0; i < 60; i++)); do
    lines+=("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.")
  done
fi
prompt() { # KEY DEPTH: the key after DEPTH of the 60 filler lines
  local key=$1 depth=$2 i
  printf 'There is important information hidden in a lot of irrelevant text. Find it and memorise it; you will be asked about it.\n'
  for ((i = 0; i < 60; i++)); do
    [ "$i" -eq "$depth" ] && printf 'The pass key is %s. Remember it. %s is the pass key.\n' "$key" "$key"
    printf '%s\n' "${lines[$i]}"
  done
  printf 'What is the pass key? The pass key is'
}
read -r -a keys <<<"${KEYS:-68213 40957 73146 29580 51874}"
read -r -a depths <<<"${DEPTHS:-20 25 30 35 40}"
[ ${#keys[@]} -eq 5 ] && [ ${#depths[@]} -eq 5 ] || { echo "passkey: KEYS and DEPTHS take five values each" >&2; exit 1; }
for policy in "${policies[@]}"; do
  found=0
  for i in 0 1 2 3 4; do
    args=(generate --prompt "$(prompt "${keys[$i]}" "${depths[$i]}")" --max-tokens 8 --policy "$policy")
    # shellcheck disable=SC2206 # ARGS is split into options on purpose
    [ "$policy" != full ] && args+=(--budget "$budget" ${ARGS:-})
    out=$(./target/release/adore "${args[@]}" 2>/dev/null)
    hit=no
    case "$out" in *"${keys[$i]}"*) hit=yes; found=$((found + 1)) ;; esac
    printf '%s key %s at line %s: %s (%s)\n' "$policy" "${keys[$i]}" "${depths[$i]}" "$hit" "$(echo "$out" | tr '\n' ' ' | tail -c 60)" >&2
  done
  echo "$policy budget $budget: $found of 5"
done
