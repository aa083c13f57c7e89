# Sourced by bin/demo, bin/test and bin/bench: make .venv with Python 3.11+ and install the project into it.
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

# What an install of $1 depends on, one line: $1, a hash of pyproject.toml, the checkout's directory (the
# editable install points at it) and the venv's Python. Code, migrations included, needs no reinstall: the
# editable install reads them from the checkout.
install_key() {
  .venv/bin/python -c 'import hashlib, os, sys
print(sys.argv[1], hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest(), os.getcwd(),
      " ".join(sys.version.split()))' "$1"
}

install_venv() {  # $1: what to install, e.g. '.[test]'
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  # pip takes seconds even when nothing changed, so it runs only when the key of this install differs from
  # the one recorded after the last install of $1 (one line per $1; delete the file to force a reinstall).
  local stamp=.venv/bridge-installs key
  key="$(install_key "$1")"
  if [ -f "$stamp" ] && grep -qxF -- "$key" "$stamp"; then
    return 0
  fi
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$1"
  { if [ -f "$stamp" ]; then awk -v asked="$1" '$1 != asked' "$stamp"; fi; echo "$key"; } > "$stamp.new"
  mv "$stamp.new" "$stamp"
}
