#!/usr/bin/env bash
# Installs LiteLLM proxy 1.109.1 into its own venv (default .venv-litellm at the repo root) for
# bench.gateway. Idempotent: a stamp file holding this script's and requirements.txt's hash skips
# the work when nothing changed.
#
# `pip install 'litellm[proxy]==1.109.1'` does not resolve from the package registry here: two of
# litellm's pins name versions the registry does not have (certifi>=2026.10.19,
# litellm-proxy-extras==0.4.113). So litellm goes in with --no-deps, then its own requirement list
# (base + the `proxy` extra, copied from the wheel's metadata) with those two relaxed:
# requirements.txt beside this script, whose header says exactly what changed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../.venv-litellm}"
python="${PYTHON:-python3}"
stamp="$venv/.bench-litellm-stamp"
want="$(cat "$0" "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/litellm" ]]; then
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet --no-deps "litellm==1.109.1"
"$venv/bin/pip" install --quiet -r "$here/requirements.txt"
"$venv/bin/litellm" --version >/dev/null
echo "$want" > "$stamp"
