"""Huffman-only deflate: a fast Numba encoder for what zlib's Z_HUFFMAN_ONLY strategy writes.

Electron counts are nearly independent from pixel to pixel, so deflate's string
matching gains nothing on them and a plain Huffman code of the bytes comes within
a few percent of their order-0 entropy. zlib's Huffman-only strategy writes that,
but at ~150 MB/s per core, which made it the slowest stage of a conversion. This
module writes the same kind of stream about three times faster: each strip becomes
one final deflate block with a dynamic Huffman code (RFC 1951), built from the
strip's byte histogram and limited to 15 bits, holding only literals, wrapped as
a zlib stream (RFC 1950), which is what TIFF compression 8 holds. Every inflater
decodes it, and every conversion decodes it again from disk (with libdeflate)
before the output is accepted.

The reference ("NumPy twin") for tests is zlib's own Huffman-only encoder: our
stream must inflate to the same bytes and be no larger than zlib's, give or take
the block headers.
"""

from __future__ import annotations

import zlib
from typing import Any

import numba
import numpy as np

__all__ = ["deflate_huffman_only", "deflate_huffman_only_zlib", "MIN_BYTES"]

MAX_LITERAL_BITS = 15
MAX_CODE_LENGTH_BITS = 7
#: Order in which the code-length code's lengths are sent (RFC 1951, 3.2.7).
CODE_LENGTH_ORDER = np.array(
    [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], dtype=np.int64
)
N_LITERAL_CODES = 257  # bytes 0-255 and end-of-block; no match lengths
N_DISTANCE_CODES = 2  # two unused distance codes of one bit each (a complete code, as zlib writes)
END_OF_BLOCK = 256
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no dictionary, "fastest" level hint
#: Below this many bytes we leave the job to zlib (its static-code blocks win on tiny inputs).
MIN_BYTES = 4096

_JIT: dict[str, Any] = {"nogil": True, "cache": True}


@numba.njit(**_JIT)
def _limited_code_lengths(freqs: Any, max_bits: int) -> Any:
    """Huffman code lengths (at most ``max_bits``) for the symbols with nonzero frequency."""
    lengths = np.zeros(freqs.size, np.int64)
    used = np.nonzero(freqs)[0]
    n_used = used.size
    if n_used == 0:
        return lengths
    if n_used == 1:
        lengths[used[0]] = 1
        return lengths
    # Huffman tree by repeatedly joining the two lightest nodes (<= 286 symbols: O(n^2) is cheap)
    weight = np.zeros(2 * n_used - 1, np.int64)
    parent = np.full(2 * n_used - 1, -1, np.int64)
    active = np.zeros(2 * n_used - 1, np.bool_)
    for k in range(n_used):
        weight[k] = freqs[used[k]]
        active[k] = True
    for k in range(n_used - 1):
        first = -1
        second = -1
        for i in range(n_used + k):
            if active[i]:
                if first < 0 or weight[i] < weight[first]:
                    second = first
                    first = i
                elif second < 0 or weight[i] < weight[second]:
                    second = i
        node = n_used + k
        weight[node] = weight[first] + weight[second]
        parent[first] = node
        parent[second] = node
        active[first] = False
        active[second] = False
        active[node] = True
    max_depth = 0
    depth = np.zeros(n_used, np.int64)
    for k in range(n_used):
        d = 0
        i = k
        while parent[i] >= 0:
            i = parent[i]
            d += 1
        depth[k] = d
        max_depth = max(max_depth, d)
    n_at = np.zeros(max(max_depth, max_bits) + 1, np.int64)
    for k in range(n_used):
        n_at[depth[k]] += 1
    # Limit the depth: replace two leaves at depth i by one at i-1 and split a shallower leaf
    # into two; the Kraft sum stays exactly 1, so the code stays complete.
    for i in range(max_depth, max_bits, -1):
        while n_at[i] > 0:
            j = i - 2
            while n_at[j] == 0:
                j -= 1
            n_at[i] -= 2
            n_at[i - 1] += 1
            n_at[j + 1] += 2
            n_at[j] -= 1
    # shortest codes to the most frequent symbols (stable: ties by symbol order)
    order = np.argsort(-freqs[used], kind="mergesort")
    k = 0
    for bits in range(1, max_bits + 1):
        for _ in range(n_at[bits]):
            lengths[used[order[k]]] = bits
            k += 1
    return lengths


@numba.njit(**_JIT)
def _reversed_canonical_codes(lengths: Any, max_bits: int) -> Any:
    """Canonical codes for ``lengths`` (RFC 1951, 3.2.2), bit-reversed for LSB-first packing."""
    n_at = np.zeros(max_bits + 1, np.int64)
    for length in lengths:
        if length:
            n_at[length] += 1
    next_code = np.zeros(max_bits + 1, np.int64)
    code = 0
    for bits in range(1, max_bits + 1):
        code = (code + n_at[bits - 1]) << 1
        next_code[bits] = code
    codes = np.zeros(lengths.size, np.uint64)
    for symbol in range(lengths.size):
        length = lengths[symbol]
        if length:
            value = next_code[length]
            next_code[length] += 1
            reversed_value = 0
            for _ in range(length):
                reversed_value = (reversed_value << 1) | (value & 1)
                value >>= 1
            codes[symbol] = reversed_value
    return codes


@numba.njit(inline="always", **_JIT)
def _put_bits(out: Any, state: Any, value: Any, n_bits: Any) -> None:
    # state = [next byte position, bit buffer, number of bits in the buffer]; LSB first
    state[1] |= np.uint64(value) << state[2]
    state[2] += np.uint64(n_bits)
    while state[2] >= 8:
        out[state[0]] = np.uint8(state[1] & np.uint64(0xFF))
        state[0] += np.uint64(1)
        state[1] >>= np.uint64(8)
        state[2] -= np.uint64(8)


@numba.njit(**_JIT)
def _byte_histogram(data: Any, freqs: Any) -> None:
    # four interleaved tables: runs of equal bytes would otherwise serialise on one counter
    tables = np.zeros((4, 256), np.int64)
    n_quads = data.size // 4 * 4
    for i in range(0, n_quads, 4):
        tables[0, data[i]] += 1
        tables[1, data[i + 1]] += 1
        tables[2, data[i + 2]] += 1
        tables[3, data[i + 3]] += 1
    for i in range(n_quads, data.size):
        tables[0, data[i]] += 1
    for symbol in range(256):
        freqs[symbol] = tables[0, symbol] + tables[1, symbol] + tables[2, symbol] + tables[3, symbol]


@numba.njit(**_JIT)
def _huffman_block(data: Any, out: Any) -> int:
    """Write ``data`` (uint8) as one final dynamic-Huffman deflate block of literals into ``out``.

    Returns the number of bytes written; ``out`` needs 2 * data.size + 1024 bytes.
    """
    freqs = np.zeros(N_LITERAL_CODES, np.int64)
    _byte_histogram(data, freqs)
    freqs[END_OF_BLOCK] = 1
    lengths = _limited_code_lengths(freqs, MAX_LITERAL_BITS)
    codes = _reversed_canonical_codes(lengths, MAX_LITERAL_BITS)

    # the code lengths of both alphabets as one sequence, run-length coded with symbols 16-18
    sequence = np.empty(N_LITERAL_CODES + N_DISTANCE_CODES, np.int64)
    sequence[:N_LITERAL_CODES] = lengths
    sequence[N_LITERAL_CODES:] = 1
    rle_symbols = np.empty(sequence.size, np.int64)
    rle_extra = np.zeros(sequence.size, np.int64)
    n_rle = 0
    i = 0
    while i < sequence.size:
        value = sequence[i]
        run = 1
        while i + run < sequence.size and sequence[i + run] == value:
            run += 1
        if value == 0 and run >= 11:
            run = min(run, 138)
            rle_symbols[n_rle] = 18
            rle_extra[n_rle] = run - 11
            n_rle += 1
        elif value == 0 and run >= 3:
            run = min(run, 10)
            rle_symbols[n_rle] = 17
            rle_extra[n_rle] = run - 3
            n_rle += 1
        elif value != 0 and run >= 4:
            rle_symbols[n_rle] = value  # the value once, then "repeat previous" 3-6 times
            n_rle += 1
            repeats = min(run - 1, 6)
            rle_symbols[n_rle] = 16
            rle_extra[n_rle] = repeats - 3
            n_rle += 1
            run = 1 + repeats
        else:
            run = 1
            rle_symbols[n_rle] = value
            n_rle += 1
        i += run
    cl_freqs = np.zeros(19, np.int64)
    for k in range(n_rle):
        cl_freqs[rle_symbols[k]] += 1
    cl_lengths = _limited_code_lengths(cl_freqs, MAX_CODE_LENGTH_BITS)
    if np.count_nonzero(cl_lengths) == 1:
        # a one-symbol code is incomplete, which inflaters refuse for code lengths: add a second
        for k in range(19):
            if cl_lengths[k] == 0:
                cl_lengths[k] = 1
                break
    cl_codes = _reversed_canonical_codes(cl_lengths, MAX_CODE_LENGTH_BITS)
    n_cl = 19
    while n_cl > 4 and cl_lengths[CODE_LENGTH_ORDER[n_cl - 1]] == 0:
        n_cl -= 1

    state = np.zeros(3, np.uint64)
    _put_bits(out, state, 1, 1)  # BFINAL: the last (only) block
    _put_bits(out, state, 2, 2)  # BTYPE: dynamic Huffman codes
    _put_bits(out, state, N_LITERAL_CODES - 257, 5)
    _put_bits(out, state, N_DISTANCE_CODES - 1, 5)
    _put_bits(out, state, n_cl - 4, 4)
    for k in range(n_cl):
        _put_bits(out, state, cl_lengths[CODE_LENGTH_ORDER[k]], 3)
    for k in range(n_rle):
        symbol = rle_symbols[k]
        _put_bits(out, state, cl_codes[symbol], cl_lengths[symbol])
        if symbol == 16:
            _put_bits(out, state, rle_extra[k], 2)
        elif symbol == 17:
            _put_bits(out, state, rle_extra[k], 3)
        elif symbol == 18:
            _put_bits(out, state, rle_extra[k], 7)

    # the literals (the hot loop): 32 bits at a time; int64 counters so nothing turns into floats
    position = np.int64(state[0])
    buffer = state[1]
    n_bits = np.int64(state[2])
    mask = np.uint64(0xFF)
    for i in range(data.size):
        symbol = data[i]
        buffer |= codes[symbol] << np.uint64(n_bits)
        n_bits += lengths[symbol]
        if n_bits >= 32:
            out[position] = np.uint8(buffer & mask)
            out[position + 1] = np.uint8((buffer >> np.uint64(8)) & mask)
            out[position + 2] = np.uint8((buffer >> np.uint64(16)) & mask)
            out[position + 3] = np.uint8((buffer >> np.uint64(24)) & mask)
            position += 4
            buffer >>= np.uint64(32)
            n_bits -= 32
    state[0] = np.uint64(position)
    state[1] = buffer
    state[2] = np.uint64(n_bits)
    _put_bits(out, state, codes[END_OF_BLOCK], lengths[END_OF_BLOCK])
    if state[2] > 0:
        _put_bits(out, state, 0, np.uint64(8) - state[2])  # pad to a whole byte
    return int(state[0])


def deflate_huffman_only(data: Any) -> bytes:
    """Raw deflate (RFC 1951) of ``data`` (any buffer of bytes) as one literal-only block."""
    array = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(2 * array.size + 1024, dtype=np.uint8)
    n_bytes = _huffman_block(array, out)
    return out[:n_bytes].tobytes()


def deflate_huffman_only_zlib(data: Any) -> bytes:
    """A zlib stream (RFC 1950; TIFF compression 8) of ``data``, Huffman-coded literals only.

    Inputs under :data:`MIN_BYTES` go through zlib's own Huffman-only strategy.
    """
    array = np.frombuffer(data, dtype=np.uint8)
    if array.size < MIN_BYTES:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
        return compressor.compress(array.data) + compressor.flush()
    return ZLIB_HEADER + deflate_huffman_only(array) + zlib.adler32(array.data).to_bytes(4, "big")
