#!/usr/bin/env bash
# Lint the protos and check them for breaking changes; `make proto-check` runs it.
#
#   buf lint      the protos module (protos/buf.yaml: STANDARD rules, google/ excluded)
#   buf breaking  the working tree against HEAD, when the protos have uncommitted changes,
#                 and HEAD against HEAD~1, the previous commit
#
# A commit is compared against only when it has protos/buf.yaml: the commit that
# introduced the checks is the first baseline. Runs from any directory, offline.
# BUF=/path/to/buf overrides the binary installed by the Makefile into .venv/buf.
set -euo pipefail

protos_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$protos_dir/.." && pwd)
wanted=${BUF:-$root/.venv/buf/node_modules/.bin/buf}
if ! BUF=$(command -v -- "$wanted"); then
  echo "proto-check: buf not found at $wanted" >&2
  echo "proto-check: run 'make test' (its install step puts buf in .venv/buf), or set BUF=/path/to/buf" >&2
  exit 2
fi
[[ $BUF == /* ]] || BUF=$PWD/$BUF
cd "$root"
module=${protos_dir#"$root"/}  # protos
failed=()
notes=()

if ! "$BUF" lint "$module"; then
  failed+=("buf lint")
fi

# buf breaking INPUT against commit REF; LABEL names the pair in messages.
breaking() {
  local input=$1 ref=$2 label=$3 sha
  if ! sha=$(git rev-parse --verify --quiet "$ref^{commit}"); then
    notes+=("$label: $ref does not exist, nothing to compare against")
    return 0
  fi
  if ! git cat-file -e "$sha:$prefix$module/buf.yaml" 2>/dev/null; then
    notes+=("$label: $ref (${sha:0:12}) has no $prefix$module/buf.yaml, nothing to compare against")
    return 0
  fi
  if ! "$BUF" breaking "$input" --against "$git_dir#ref=$sha,subdir=$prefix$module"; then
    failed+=("buf breaking ($label)")
  fi
}

if prefix=$(git -C "$root" rev-parse --show-prefix 2>/dev/null); then
  # The common dir, so that a linked worktree works too; refs are resolved to shas first.
  git_dir=$(git rev-parse --path-format=absolute --git-common-dir)
  if [[ -n $(git status --porcelain --untracked-files=all -- "$module" | grep -E '(\.proto|/buf\.yaml)"?$' || true) ]]; then
    breaking "$module" HEAD "working tree vs HEAD"
  fi
  if git rev-parse --verify --quiet "HEAD^{commit}" >/dev/null; then
    breaking "$git_dir#ref=$(git rev-parse HEAD),subdir=$prefix$module" HEAD~1 "HEAD vs HEAD~1"
  else
    notes+=("HEAD vs HEAD~1: no commit yet, nothing to compare against")
  fi
else
  notes+=("breaking: $root is not a git work tree, nothing to compare against")
fi

for note in "${notes[@]}"; do
  echo "proto-check: note: $note"
done
if ((${#failed[@]})); then
  printf 'proto-check: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "proto-check OK: buf $("$BUF" --version) lint and breaking checks passed"
