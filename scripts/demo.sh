#!/usr/bin/env bash
# Install empcompress and run it on the built-in example movie:
# convert, verify against the source, restore byte for byte.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e . 2>&1 | grep -v "^WARNING" || true
work="${1:-$(mktemp -d)}"
empcompress example "$work" --overwrite
empcompress convert "$work/example_movie.mrc" -o "$work/example_movie.tif" --overwrite
empcompress info "$work/example_movie.tif"
empcompress verify "$work/example_movie.tif" --against "$work/example_movie.mrc"
empcompress restore "$work/example_movie.tif" -o "$work/restored.mrc" --overwrite
cmp "$work/example_movie.mrc" "$work/restored.mrc" && echo "restored file is byte-identical: $work/restored.mrc"
