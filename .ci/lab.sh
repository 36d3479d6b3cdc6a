#!/usr/bin/env bash
# The README's "Use it in your own lab", done exactly as it says: an empty
# folder with only rpc.ts and the README's main.ts, then every command of its
# `sh lab` blocks, each checked. The commands come from the README itself, so
# the section cannot go stale. Runtimes: .ci's Deno, Bun and Node 24 for the
# first block (so `node main.ts` is Node 24), the machine's Node 20 for npm,
# npx and tsx.
# Run from anywhere: `bash .ci/lab.sh`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runtimes="$root/.ci/node_modules/.bin"
lab="$(mktemp -d)"
trap 'rm -rf "$lab"' EXIT

# The README's ```ts main.ts block, and its ```sh lab blocks (a blank line between blocks).
awk '/^```ts main.ts$/ { on = 1; next } on && /^```$/ { exit } on' "$root/README.md" > "$lab/main.ts"
commands="$(mktemp)"
trap 'rm -rf "$lab" "$commands"' EXIT
awk '/^```sh lab$/ { on = 1; next } on && /^```$/ { on = 0; print ""; next } on' "$root/README.md" > "$commands"
cp "$root/rpc.ts" "$lab/"
cd "$lab"
[ -s main.ts ] && grep -q "from \"./rpc.ts\"" main.ts || { echo "no main.ts in the README"; exit 1; }

expected=$'30 6\n30'
block=1
while IFS= read -r line; do
  if [ -z "$line" ]; then block=$((block + 1)); continue; fi
  command="${line%%#*}"                 # the command, without its comment
  command="${command%"${command##*[![:space:]]}"}"
  echo "--- [$(ls | tr '\n' ' ')] \$ $command"
  if [ "$block" -eq 1 ]; then path="$runtimes:$PATH"; else path="$PATH:$runtimes"; fi
  output="$(NO_COLOR=1 PATH="$path" bash -c "$command" 2>&1 < /dev/null)" || { echo "$output"; echo "FAILED: $command"; exit 1; }
  case "$command" in
    *main.ts)
      case "$command" in
        *check*|*tsc*) [ -z "$(echo "$output" | grep -v '^Check ')" ] || { echo "$output"; exit 1; } ;;
        *) [ "$output" = "$expected" ] || { echo "$output"; echo "FAILED: expected 30 6 / 30"; exit 1; } ;;
      esac
      echo "ok" ;;
  esac
done < "$commands"
echo "--- the lab folder works as the README says"
