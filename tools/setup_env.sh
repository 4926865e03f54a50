#!/usr/bin/env bash
# Create .venv/ at the repository root and install DeRy into it in editable mode.
# A second run with unchanged requirements is a no-op.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
venv="$root/.venv"
stamp="$venv/.dery-installed"
want="$(cat requirements/runtime.txt requirements/tests.txt requirements/optional.txt setup.py | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import dery" 2>/dev/null; then
    exit 0
fi
echo "[setup] creating $venv and installing requirements (a few minutes the first time)"
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q --progress-bar off)
# torch and torchvision first and together, so no later package swaps the torch build.
"${pip[@]}" "$(grep -E '^torch==' requirements/runtime.txt | cut -d' ' -f1)" \
           "$(grep -E '^torchvision==' requirements/runtime.txt | cut -d' ' -f1)"
"${pip[@]}" -r requirements/runtime.txt -r requirements/tests.txt
# Optional extras are best effort: the demo and tests say what is missing if they did not install.
"${pip[@]}" -r requirements/optional.txt || echo "[setup] optional requirements not installed (see requirements/optional.txt)"
"${pip[@]}" --no-build-isolation --no-deps -e .
echo "$want" > "$stamp"
echo "[setup] done: $("$venv/bin/python" -c 'import dery, torch; print("dery", dery.__version__, "torch", torch.__version__)')"
