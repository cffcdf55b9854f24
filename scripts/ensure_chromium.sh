#!/usr/bin/env bash
# Browser tests drive Debian's Chromium (/usr/bin/chromium). Install it when
# missing and we are root (CI); otherwise say loudly that those tests will skip.
set -u
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure_chromium: installing Debian's chromium package for the browser tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends chromium >/dev/null && exit 0
  echo "ensure_chromium: could not install chromium" >&2
fi
echo "################################################################################"
echo "# /usr/bin/chromium is missing: the browser tests will be SKIPPED.             #"
echo "# Install it with: sudo apt-get install chromium   (then run make test again)  #"
echo "################################################################################"
exit 0
