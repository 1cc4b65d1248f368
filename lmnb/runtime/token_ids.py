"""Helpers over token id lists shared by the radix cache and the output processor."""
from __future__ import annotations


def common_prefix_len(a: list[int], b: list[int]) -> int:
    """Length of the common prefix. Slice comparisons run in C: the usual case (one is a
    prefix of the other) is one of them, a mismatch is found by bisection over slices."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo]; the first difference is before hi
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    while a[lo] == b[lo]:
        lo += 1
    return lo
