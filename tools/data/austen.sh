#!/usr/bin/env bash
# Fetches the test text: Jane Austen's six novels from Debian's r-cran-janeaustenr package,
# extracted to plain UTF-8 text by tools/data/extract_austen.py (no R needed).
#
#   tools/data/austen.sh [CACHE_DIR]        CACHE_DIR defaults to ${KIV_CACHE:-~/.cache/kiv}
#
# Output: $CACHE/text/austen/{sense_and_sensibility,pride_and_prejudice,mansfield_park,emma,
#         northanger_abbey,persuasion}.txt and all.txt (the six in that order, a blank line
#         between two books). Exits at once when they are there (marker file .complete). The
#         folder is built beside its final place and renamed in, so a killed run leaves nothing
#         half-made. all.txt must have the pinned sha256 below (janeaustenr 1.0.0, Debian
#         1.0.0-1); set KIV_AUSTEN_ALLOW_CHANGED=1 to accept different text, with a warning.
set -euo pipefail

PKG=r-cran-janeaustenr
ALL_SHA256=887d811d970b962381ef54f0d0dde7d14e7ce7aa2c85fdef0a8a97a47e4390d0
FILES=(sense_and_sensibility pride_and_prejudice mansfield_park emma northanger_abbey persuasion all)

die() { echo "austen: ERROR: $*" >&2; exit 1; }
say() { echo "austen: $*"; }

[ $# -le 1 ] || die "usage: $0 [CACHE_DIR]"
CACHE=${1:-${KIV_CACHE:-$HOME/.cache/kiv}}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
TEXT="$CACHE/text"
DEST="$TEXT/austen"

is_complete() {
  [ -f "$DEST/.complete" ] || return 1
  for f in "${FILES[@]}"; do [ -s "$DEST/$f.txt" ] || return 1; done
}

if is_complete; then
  say "text: present at $DEST"
  exit 0
fi

mkdir -p "$TEXT"
exec 9>"$TEXT/.austen.lock"
if command -v flock >/dev/null; then flock 9; fi
if is_complete; then
  say "text: present at $DEST"
  exit 0
fi

start=$SECONDS
TMP=$(mktemp -d "$TEXT/.austen.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian's package tools"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found: this script needs Debian's package tools"

# apt-get download writes into the current directory; run as root, it would hand the download to
# the _apt user, who cannot write into our private temp folder, so keep it as the caller.
download() { (cd "$TMP" && apt-get -q -o APT::Sandbox::User="$(id -un)" download "$PKG") \
               >"$TMP/apt.log" 2>&1; }
say "downloading $PKG with apt-get ..."
if ! download; then
  say "apt-get download failed; running apt-get update and trying again"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq >"$TMP/apt-update.log" 2>&1 ||
    { cat "$TMP/apt-update.log" >&2; die "apt-get update failed"; }
  download || { cat "$TMP/apt.log" >&2; die "apt-get download $PKG failed (see above)"; }
fi
DEB=$(ls "$TMP"/*.deb 2>/dev/null | head -n1)
[ -n "$DEB" ] || { cat "$TMP/apt.log" >&2; die "apt-get download left no .deb"; }
say "package: $(basename "$DEB"), $(stat -c %s "$DEB") bytes, sha256 $(sha256sum "$DEB" | cut -d' ' -f1)"

dpkg-deb -x "$DEB" "$TMP/pkg" || die "dpkg-deb -x $(basename "$DEB") failed"
BUILD="$TMP/austen"
"$PYTHON" "$HERE/extract_austen.py" "$TMP/pkg" "$BUILD" || die "extraction failed (see above)"

got=$(sha256sum "$BUILD/all.txt" | cut -d' ' -f1)
if [ "$got" != "$ALL_SHA256" ]; then
  msg="all.txt sha256 is $got, expected $ALL_SHA256 (the package text changed?)"
  [ "${KIV_AUSTEN_ALLOW_CHANGED:-0}" = 1 ] || die "$msg. Set KIV_AUSTEN_ALLOW_CHANGED=1 to accept it."
  echo "austen: WARNING: $msg; accepted because KIV_AUSTEN_ALLOW_CHANGED=1" >&2
fi
{
  echo "all_sha256=$got"
  echo "source=debian:$(basename "$DEB")"
} >"$BUILD/.complete.tmp"
mv "$BUILD/.complete.tmp" "$BUILD/.complete"

if [ -e "$DEST" ]; then mv "$DEST" "$TMP/old"; fi
mv "$BUILD" "$DEST"
say "text: installed at $DEST in $((SECONDS - start))s (all.txt sha256 $got)"
