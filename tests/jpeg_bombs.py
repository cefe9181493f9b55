"""Progressive-JPEG "scan bombs" for the tests: a valid greyscale progressive JPEG whose AC scan
(end-of-band runs only: a few bytes) is repeated ``scans`` times. Each scan makes libjpeg walk
every block of the picture again, so decode time grows with ``scans`` while the file stays small
(8000x8000 with 3,000 scans: 476 KB, ~100 s to decode)."""

from __future__ import annotations

import struct


def _segment(marker: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


class _Bits:
    def __init__(self):
        self.acc, self.n, self.buf = 0, 0, bytearray()

    def put(self, value: int, length: int) -> None:
        for i in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> i) & 1)
            self.n += 1
            if self.n == 8:
                self.buf.append(self.acc)
                if self.acc == 0xFF:
                    self.buf.append(0)  # byte stuffing
                self.acc, self.n = 0, 0

    def flush(self) -> bytes:
        while self.n:
            self.put(1, 1)
        return bytes(self.buf)


def scan_bomb(width: int, height: int, scans: int) -> bytes:
    """The JPEG bytes: one DC scan, then the same AC scan ``scans`` times."""
    blocks = -(-width // 8) * -(-height // 8)
    dqt = _segment(0xDB, b"\x00" + bytes([1] * 64))
    sof = _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    dht_dc = _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")  # one code: category 0
    symbols = bytes([n << 4 for n in range(15)])  # EOBn runs, 15 codes of 4 bits
    dht_ac = _segment(0xC4, b"\x10" + bytes([0, 0, 0, 15] + [0] * 12) + symbols)
    bits = _Bits()
    for _ in range(blocks):
        bits.put(0, 1)
    dc = _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + bits.flush()
    bits, left = _Bits(), blocks
    while left:
        run = min(left, 32767)
        n = run.bit_length() - 1
        bits.put(n, 4)
        bits.put(run - (1 << n), n)
        left -= run
    ac = _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + bits.flush()
    return b"\xff\xd8" + dqt + sof + dht_dc + dc + dht_ac + ac * scans + b"\xff\xd9"
