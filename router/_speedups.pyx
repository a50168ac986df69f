# cython: language_level=3, boundscheck=False, wraparound=False
"""The router's two hottest loops in C: framing canonical requests and cutting simple replies.

Optional: built by ``pip install`` when a C compiler is there, else the pure-Python versions
in :mod:`router.framing` and :mod:`router.replies` run (they are the reference; the unit
tests check that both give the same result on any input). Every read is checked against the
buffer's length by hand (bounds checking is off): the input is whatever a client sent.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

# Lengths beyond this many digits are left to the Python code (which gives the engine's
# verdict on them); 18 digits cannot overflow a 64-bit integer.
cdef enum:
    MAX_DIGITS = 18


cdef inline Py_ssize_t _number(const char* buf, Py_ssize_t p, Py_ssize_t n,
                               long long* value) noexcept:
    """Canonical digits at `p` up to a CRLF (no sign, no leading zero): the offset after the
    CRLF, or -1 when the bytes are not that (or not all there)."""
    cdef Py_ssize_t start = p
    cdef long long v = 0
    cdef char c
    while p < n:
        c = buf[p]
        if c == c'\r':
            break
        if c < c'0' or c > c'9' or p - start >= MAX_DIGITS:
            return -1
        v = v * 10 + (c - c'0')
        p += 1
    if p == start or p + 1 >= n or buf[p + 1] != c'\n':
        return -1
    if buf[start] == c'0' and p - start > 1:
        return -1
    value[0] = v
    return p + 2


def split_canonical(bytes data):
    """The leading requests of `data` written canonically (``*<argc>`` then ``$<len>`` for
    every argument, lengths without leading zeros, each argument followed by CRLF), as
    ``(args, raw)`` pairs, and the bytes they take: the contract of
    :meth:`router.framing.CanonicalSplitter.split`, whose caller filters huge headers."""
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, p, i, q
    cdef long long argc, size
    cdef list out = []
    cdef list args
    cdef object arg
    while pos < n and buf[pos] == c'*':
        p = _number(buf, pos + 1, n, &argc)
        # Each argument takes 6 bytes at least ("$0\r\n\r\n"): more than the rest can hold
        # means not all there, and bounds the list by the packet's size.
        if p < 0 or argc == 0 or argc > (n - p) // 6:
            break
        args = [None] * <Py_ssize_t>argc
        i = 0
        while i < argc:
            if p >= n or buf[p] != c'$':
                break
            q = _number(buf, p + 1, n, &size)
            if q < 0 or size > n - q - 2:
                break
            if buf[q + size] != c'\r' or buf[q + size + 1] != c'\n':
                break
            args[i] = buf[q:q + size]
            p = q + size + 2
            i += 1
        if i < argc:
            break
        out.append((args, data if pos == 0 and p == n else buf[pos:p]))
        pos = p
    return out, pos


def simple_frames(bytes buf, Py_ssize_t start, list out):
    """Append to `out` the whole replies of the simple kinds at `start` and after (``+``,
    ``-``, ``:`` lines and ``$`` bulks, nil included), each its own bytes object (the whole
    buffer itself when one reply is all of it); stop at anything else or anything short.
    Returns where the walk stopped: the pure-Python walk of
    :meth:`router.replies.ReplyScanner.feed` goes on from there."""
    cdef const char* b = PyBytes_AS_STRING(buf)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t end, e
    cdef long long size
    cdef char t
    while start < n:
        t = b[start]
        if t == c'+' or t == c'-' or t == c':':
            e = start + 1
            while e + 1 < n and not (b[e] == c'\r' and b[e + 1] == c'\n'):
                e += 1
            if e + 1 >= n:
                break
            end = e + 2
        elif t == c'$':
            if start + 4 < n and b[start + 1] == c'-' and b[start + 2] == c'1' \
                    and b[start + 3] == c'\r' and b[start + 4] == c'\n':
                end = start + 5
            else:
                e = _number(b, start + 1, n, &size)
                if e < 0 or size > n - e - 2:
                    break
                end = e + size + 2
        else:
            break
        if start == 0 and end == n:
            out.append(buf)
        else:
            out.append(b[start:end])
        start = end
    return start
