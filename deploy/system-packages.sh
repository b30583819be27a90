#!/usr/bin/env bash
# System packages (Debian/Ubuntu, as root): Chromium for static PNG/SVG export and the
# browser tests, and fonts for the figures. The Docker image and CI both run this.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core fonts-liberation ca-certificates >/dev/null
test -x /usr/bin/chromium
