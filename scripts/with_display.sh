#!/usr/bin/env bash
# Runs a command with a display: the real one if there is one, Xvfb if installed,
# otherwise headless (the command then writes files instead of opening napari).
set -u
if [ -n "${DISPLAY:-}" ] || [ -n "${WAYLAND_DISPLAY:-}" ]; then exec "$@"; fi
if command -v xvfb-run >/dev/null 2>&1 && [ -n "${HILA_XVFB:-}" ]; then exec xvfb-run -a "$@"; fi
exec "$@"
