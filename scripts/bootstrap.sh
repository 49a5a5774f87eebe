#!/usr/bin/env bash
# Installs what soundsight needs on a fresh Debian machine, and nothing when it is already there:
# system packages (speech synthesizers, Fashion-MNIST, Chromium for the app's browser test) and a
# Python 3.11 virtual environment in .venv with the project installed in editable mode.
# Sourced by scripts/main.sh and scripts/test.sh; safe to run again.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"
system_packages=(python3-venv espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
                 dataset-fashion-mnist chromium fonts-dejavu-core time)  # time: GNU time, for bench/train_scale.py

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for package in "${system_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bootstrap] installing system packages: ${missing[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

python_bin="${SOUNDSIGHT_PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "[bootstrap] soundsight needs Python 3.11; $python_bin is $("$python_bin" --version 2>&1)." >&2
  echo "[bootstrap] set SOUNDSIGHT_PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating the virtual environment $venv"
  "$python_bin" -m venv "$venv"
fi

# Reinstall only when the declared requirements change.
requirements_hash="$(sha256sum "$repo_root/setup.py" | cut -d' ' -f1)"
stamp="$venv/.soundsight-installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "$requirements_hash" ]; then
  echo "[bootstrap] installing Python packages into $venv (first time: a few minutes)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo_root[trainer,app,test]"
  # Voila needs a Jupyter kernel that runs this environment's Python.
  "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$requirements_hash" > "$stamp"
fi

# Prism, Beam's portable runner, for the installed Beam: built from the Go module proxy when Go is here,
# so that no --runner=PrismRunner run downloads it (beam_jobs/runners/default.py finds it beside the venv's
# Python). Without Go, Beam downloads its own on the first Prism run, where the internet is reachable.
beam_version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("apache-beam"))')"
if [ "$(cat "$venv/bin/prism.version" 2>/dev/null)" != "$beam_version" ]; then
  if command -v go >/dev/null; then
    echo "[bootstrap] building Prism v$beam_version into $venv/bin (first time: a few minutes)"
    GOBIN="$venv/bin" go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$beam_version"
    echo "$beam_version" > "$venv/bin/prism.version"
  else
    echo "[bootstrap] no Go toolchain: Prism is not built; a Prism run downloads Beam's own binary" >&2
  fi
fi
