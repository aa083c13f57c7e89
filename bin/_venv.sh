# Sourced by bin/demo and bin/test: make .venv with Python 3.11+ and install the project into it.
set -euo pipefail

find_python() {
  for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "bridge needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

install_venv() {  # $1: what to install, e.g. '.[test]'
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1"
}
