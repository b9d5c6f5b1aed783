"""A pure-Python reader of the native core's stored generations (``Segment.dump()``).

The twin of ``load_segment``/``Segment.events`` in ``core/_native.c``, for a process without
the extension (``flightdeck summary`` on a laptop, ``FLIGHTDECK_NO_EXTENSIONS=1``): slower,
the same tuples. Every length is checked against the bytes given; anything malformed raises
``ValueError``. The layout is in ``docs/snapshot-format.md``.
"""

from __future__ import annotations

from typing import Any

from ..core.events import NATIVE_LAYOUTS

Event = tuple[Any, ...]

# Value tags (``_native.c``, "Value tags of the generic encoding").
V_NONE, V_FALSE, V_TRUE, V_INT, V_STR, V_TUPLE, V_FLOAT, V_BYTES, V_BIGINT, V_LIST = range(10)
V_ASCII, V_REF = 10, 11
MAX_DEPTH = 8
K_GENERIC = 0
#: Field layouts per event kind, as the native encoder's (``core/_kinds.h``); the numbers
#: no kind has below the highest one decode as the C decoder does: the kind alone.
SCHEMA: dict[int, str] = {k: NATIVE_LAYOUTS.get(k, "") for k in range(1, max(NATIVE_LAYOUTS) + 1)}
_MASK = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _MASK
    return v - (1 << 64) if v >> 63 else v


def unzz(u: int) -> int:
    """A zigzag-encoded varint's value (``unzz`` in ``core/native/codec.h``)."""
    return (u >> 1) ^ -(u & 1)


def read_varints(data: bytes, pos: int, n: int) -> tuple[list[int], int]:
    """``n`` varints of the stored form from ``pos``, and the position after them; raises
    ``ValueError`` when they run past the end or are too long."""
    r = _Reader(data, pos, len(data))
    return [r.varint() for _ in range(n)], r.p


class Generation:
    """One stored generation: its strings decoded, its records kept as bytes."""

    __slots__ = ("buf", "count", "status_len", "strs", "t_base", "t_end", "t_start")

    def __init__(self, data: bytes) -> None:
        r = _Reader(data, 0, len(data))
        self.t_base = unzz(r.varint())
        self.t_start = unzz(r.varint())
        self.t_end = unzz(r.varint())
        self.count = r.varint()
        self.status_len = r.varint()
        nstrs = r.varint()
        if nstrs > len(data) - r.p:
            raise ValueError("corrupt flightdeck generation (counts)")
        strs = []
        for _ in range(nstrs):
            n = r.varint()
            if n > len(data) - r.p:
                raise ValueError("corrupt flightdeck generation (string)")
            strs.append(data[r.p : r.p + n].decode("utf-8", "surrogatepass"))
            r.p += n
        self.strs = strs
        length = r.varint()
        if length != len(data) - r.p or self.status_len > length:
            raise ValueError("corrupt flightdeck generation (record length)")
        self.buf = data[r.p :]

    def events(self) -> list[Event]:
        return self._decode(self.status_len, len(self.buf))

    def status(self) -> tuple[dict[Any, Event], dict[Any, Event]]:
        tasks: dict[Any, Event] = {}
        requests: dict[Any, Event] = {}
        for e in self._decode(0, self.status_len):
            if len(e) >= 3 and type(e[0]) is int:
                if e[0] == 1:
                    tasks[e[2]] = e
                elif e[0] == 8:
                    requests[e[2]] = e
        return tasks, requests

    def _decode(self, start: int, end: int) -> list[Event]:
        d = _Reader(self.buf, start, end, self.strs, self.t_base)
        out = []
        while d.p < d.end:
            out.append(d.event())
        return out


class _Reader:
    __slots__ = ("buf", "end", "last_t", "last_tid", "p", "strs", "t_first")

    def __init__(
        self, buf: bytes, start: int, end: int, strs: list[str] | None = None, t_base: int = 0
    ) -> None:
        self.buf = buf
        self.p = start
        self.end = end
        self.strs = strs or []
        self.last_t = t_base
        self.t_first = 0
        self.last_tid = 0

    def varint(self) -> int:
        buf, p, end = self.buf, self.p, self.end
        v = shift = 0
        while p < end:
            b = buf[p]
            p += 1
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                self.p = p
                return v & _MASK
            shift += 7
            if shift > 63:
                break
        raise ValueError("corrupt flightdeck segment (varint)")

    def value(self, depth: int) -> Any:
        if self.p >= self.end:
            raise ValueError("corrupt flightdeck segment (end)")
        at = self.p
        tag = self.buf[at]
        self.p += 1
        if tag == V_NONE:
            return None
        if tag == V_FALSE:
            return False
        if tag == V_TRUE:
            return True
        if tag == V_INT:
            return _signed(unzz(self.varint()))
        if tag in (V_STR, V_BIGINT):
            u = self.varint()
            if u >= len(self.strs):
                raise ValueError("corrupt flightdeck segment (string index)")
            return int(self.strs[u]) if tag == V_BIGINT else self.strs[u]
        if tag in (V_TUPLE, V_LIST):
            if depth >= MAX_DEPTH + 1:
                raise ValueError("corrupt flightdeck segment (depth)")
            n = self.varint()
            if n > self.end - self.p:
                raise ValueError("corrupt flightdeck segment (length)")
            items = [self.value(depth + 1) for _ in range(n)]
            return tuple(items) if tag == V_TUPLE else items
        if tag == V_REF:
            u = self.varint()
            if u == 0 or u > at:
                raise ValueError("corrupt flightdeck segment (ref)")
            ref = at - u
            if self.buf[ref] != V_ASCII or ref + 2 + self.buf[ref + 1] > at:
                raise ValueError("corrupt flightdeck segment (ref target)")
            return self.buf[ref + 2 : ref + 2 + self.buf[ref + 1]].decode("ascii")
        if tag == V_ASCII:
            if self.p >= self.end:
                raise ValueError("corrupt flightdeck segment (end)")
            n = self.buf[self.p]
            self.p += 1
            if n > self.end - self.p:
                raise ValueError("corrupt flightdeck segment (ascii)")
            self.p += n
            return self.buf[self.p - n : self.p].decode("ascii")
        if tag == V_FLOAT:
            if self.end - self.p < 8:
                raise ValueError("corrupt flightdeck segment (float)")
            import struct

            (x,) = struct.unpack_from("<d", self.buf, self.p)
            self.p += 8
            return x
        if tag == V_BYTES:
            n = self.varint()
            if n > self.end - self.p:
                raise ValueError("corrupt flightdeck segment (bytes)")
            self.p += n
            return self.buf[self.p - n : self.p]
        raise ValueError("corrupt flightdeck segment (tag)")

    def event(self) -> Event:
        kind = self.buf[self.p]
        self.p += 1
        if kind == K_GENERIC:
            v = self.value(0)
            if type(v) is not tuple:
                raise ValueError("corrupt flightdeck segment (generic)")
            return v
        schema = SCHEMA.get(kind)
        if schema is None:
            raise ValueError("corrupt flightdeck segment (kind)")
        out: list[Any] = [kind]
        for c in schema:
            if c == "V":
                out.append(self.value(1))
                continue
            u = self.varint()
            if c == "T":
                self.last_t = _signed(self.last_t + unzz(u))
                self.t_first = self.last_t
                out.append(self.last_t)
            elif c == "R":
                out.append(0 if u == 0 else _signed(self.t_first + unzz(u - 1)))
            elif c == "N":
                out.append(_signed(unzz(u)))
            elif c == "n":
                out.append(None if u == 0 else _signed(unzz(u - 1)))
            else:  # "I": a task id
                if u == 0:
                    out.append(None)
                    continue
                u -= 1
                d = unzz(u >> 1)
                if not u & 1:
                    d *= 16
                self.last_tid = _signed(self.last_tid + d)
                out.append(self.last_tid)
        return tuple(out)
