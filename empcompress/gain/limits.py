"""The rules gain handling is held to: thresholds, sample sizes, the record entry's version and texts."""

#: Above this fraction of a movie's values being exceptions, the movie is kept as float32.
MAX_EXCEPTION_FRACTION = 1e-3
#: Frames read by :func:`classify_movie` (evenly spaced through the movie).
DEFAULT_SAMPLE_FRAMES = 8
#: Frames conversion samples to decide what to try with a gain, and of those,
#: how many orient a supplied gain (the one read pass then checks every frame).
PLAN_SAMPLE_FRAMES = 4
ORIENT_SAMPLE_FRAMES = 2
#: Without a given gain, at least this fraction of the hit pixels must confirm
#: an estimated gain (two or more distinct values reproduced) to call a movie
#: gain-normalised: a sample too sparse to tell is classified "float" (lossless).
MIN_RELIABLE_FRACTION = 0.01
#: Version of the record's "gain" entry (2 adds ``transform``; entries without one are written as 1).
GAIN_RECORD_VERSION = 2
EXCEPTION_ENCODING = (
    "zlib+base64 of little-endian uint32 arrays: the number of exceptions of each frame (nz values), "
    "then for each frame its MRC-order flat pixel indices (y * nx + x), the first absolute and the "
    "rest as differences, then the exact float32 bit patterns in the same order"
)
GAIN_FORMULA = (
    "value[y, x] = float32(count * gain[y, x]) with the TIFF page flipped back to MRC row order "
    "(count at TIFF row ny-1-y), then the exception values patched in"
)
