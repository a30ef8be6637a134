#!/usr/bin/env bash
# Set up this project on a fresh Debian machine with Python 3.11: system packages, a virtual
# environment in .venv with the pinned Python packages (DVC telemetry is off in .dvc/config).
# Safe to run again: it skips what is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: the tests' throwaway MLflow store (a multi-machine tracking server runs on it too)
APT_PACKAGES=(espeak-ng flite sox pocketsphinx-testdata libsndfile1 gcc g++ git postgresql)

install_system_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python_packages() {
  local python="${PYTHON:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { echo "setup: Python 3.11 is required (found $("$python" --version))" >&2; exit 1; }
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  local stamp=.venv/.requirements.sha256
  local want
  want=$(cat requirements.lock pyproject.toml recipes/embedded/pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  echo "setup: installing Python packages into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first and pinned: a bare `torch` requirement could resolve to a multi-GB CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  # The product, and the recipe that trains its embedded model (its own package, recipes/embedded).
  .venv/bin/python -m pip install -q -c requirements.lock -e ".[test,sweep]" -e recipes/embedded
  echo "$want" > "$stamp"
}

install_system_packages
install_python_packages
echo "setup: done (activate with: . .venv/bin/activate)"
