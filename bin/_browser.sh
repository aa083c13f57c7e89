# Sourced by bin/test: Debian's Chromium, which the dashboard's browser test drives
# (tests/test_e2e_dashboard.py, through playwright, which downloads no browser of its own).
# Installed when /usr/bin/chromium is missing and we are root with apt-get (CI, a fresh machine);
# otherwise that test skips, or fails under BRIDGE_REQUIRE_SERVICES=1.
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "bin/test: /usr/bin/chromium is missing (Debian's chromium package); the dashboard's browser test needs it" >&2
    return 0
  fi
  echo "bin/test: installing Debian's chromium for the dashboard's browser test" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
}
