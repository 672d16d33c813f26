#!/usr/bin/env bash
# Installs what the GUI tests need from Debian when it is missing and we are root:
# Xvfb (napari's canvas does not render offscreen) and Qt's xcb libraries.
set -u
need=()
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
for lib in libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxkbcommon-x11-0 libxcb-randr0 libxcb-render-util0 libxcb-image0 libxcb-shape0 libxcb-cursor0; do
  dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "note: GUI tests need: ${need[*]} (install them with your package manager); they will be skipped" >&2
  exit 0
fi
echo "installing system packages for GUI tests: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
  || echo "warning: could not install ${need[*]}; GUI tests will be skipped" >&2
