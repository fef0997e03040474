"""Single-movie conversion: MRC movie -> verified multi-page TIFF stack.

Every source byte is read once (:mod:`empcompress.readpass`), a bounded number of
frame buffers in memory:

1. *sample*: the middle frame is read first and held; the storage type and the
   codec are chosen from it;
2. *read and encode*, one pass in file order: hash the whole file (sha256), check
   that each frame fits the storage type, flip it to TIFF row order, cast it, encode
   its strips in parallel and write a temporary file. The record in the first page
   holds placeholders for what is known only at the end (the sha256, the value
   range); they are filled in place afterwards. A frame that does not fit the type
   chosen from the sample starts the pass again with a wider type (rare);
3. *verify*: decode the temporary file from disk, rebuild every source frame's
   bytes, and check that the rebuilt file (header, extended header, frames) hashes
   to the sha256 of what pass 2 read. Only then is the file renamed into place.

Gain-normalised conversion (a ``gain``) reads every source byte once too: the gain
plan's sampled frames decide what the pass tries (counts as uint8 or uint16, or the
float path), and the pass counts every frame against the gain (collecting the
record's exceptions), hashes and encodes it; see :func:`.with_gain.write_with_gain`.
It is verified the same way, the gain reference read from disk.

Its parts, one module each:

- :mod:`.api`: :func:`convert_movie` (the stages in order, the output's name, warnings);
- :mod:`.survey`: :func:`survey_movie`, sha256 and statistics in one read, storing nothing;
- :mod:`.plain`: the conversion without a gain (stage 2 from the middle frame);
- :mod:`.with_gain`: the conversion with a gain (stage 2 from the gain plan's sampled frames);
- :mod:`.codec_trial`: the codec, ``auto`` by a trial on a sample frame;
- :mod:`.tiff_record`: the record in the TIFF and the placeholder it is written as first;
- :mod:`.write_pass`: the pass that writes the temporary TIFF, and its TIFF kind (BigTIFF or not).
"""

from __future__ import annotations

from ..readpass import ProgressCallback as ProgressCallback
from .api import TINY_FRAME_BYTES as TINY_FRAME_BYTES
from .api import ConversionResult, convert_movie
from .api import threads_for_frames as threads_for_frames
from .survey import MovieSurvey, survey_movie
from .with_gain import HELD_SAMPLE_BYTES as HELD_SAMPLE_BYTES

__all__ = ["MovieSurvey", "ConversionResult", "survey_movie", "convert_movie"]
