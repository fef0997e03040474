#!/usr/bin/env bash
# Install empcompress and run it on the built-in examples:
#  1. one movie: convert, verify against the source, restore byte for byte;
#  2. a small drive (count movies, a gain-normalised set, other files): compress it into a
#     verified BagIt bag (the main job), re-check the bag, restore a movie from it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet -e . 2>&1 | grep -v "^WARNING" || true
work="${1:-$(mktemp -d)}"
mkdir -p "$work"

echo "== one movie"
empcompress example "$work" --overwrite
empcompress convert "$work/example_movie.mrc" -o "$work/example_movie.tif" --overwrite
empcompress verify "$work/example_movie.tif" --against "$work/example_movie.mrc"
empcompress restore "$work/example_movie.tif" -o "$work/restored.mrc" --overwrite
cmp "$work/example_movie.mrc" "$work/restored.mrc" && echo "restored movie is byte-identical"

echo "== a whole drive"
rm -rf "$work/drive" "$work/bag"
empcompress example "$work/drive" --drive
empcompress scan "$work/drive"
empcompress compress "$work/drive" "$work/bag"
empcompress verify "$work/bag" --full
(cd "$work/bag" && sha256sum --quiet -c manifest-sha256.txt) && echo "sha256sum -c: bag payload OK"
empcompress restore "$work/bag/data/gain-normalised/frames_001.tif" -o "$work/frames_001.mrc" --overwrite
cmp "$work/drive/gain-normalised/frames_001.mrc" "$work/frames_001.mrc" \
    && echo "gain-normalised movie restored byte for byte from counts + gain reference"
echo "outputs in $work"
