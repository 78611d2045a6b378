#!/usr/bin/env bash
# Let apt see Debian's contrib and non-free components, where the MBROLA voices (mbrola-us1, -us2, -us3,
# -en1) and SVOX Pico (libttspico-utils) live. Idempotent; Debian only; run as root (make voices uses sudo).
set -euo pipefail
. /etc/os-release
if [ "${ID:-}" != debian ]; then
    echo "scripts/debian-nonfree.sh: this is ${PRETTY_NAME:-not Debian}; enable the component that holds" \
         "mbrola-us1 and libttspico-utils yourself (Ubuntu: multiverse)" >&2
    exit 1
fi
cat > /etc/apt/sources.list.d/asr-contrib-non-free.sources <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME}
Components: contrib non-free
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
