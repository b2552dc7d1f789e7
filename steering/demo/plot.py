"""A tiny PNG line plot without matplotlib (not a dependency): the Golden Gate curve.

x: the multipliers, evenly spaced; y: 0..1. Red: share of replies that bring in the bridge;
blue: share of well-formed replies. Tick labels use a 3x5 pixel font of digits.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

WIDTH, HEIGHT, MARGIN = 520, 300, 40
RED, BLUE, GREY, BLACK, WHITE = (200, 30, 30), (30, 80, 200), (200, 200, 200), (0, 0, 0), (255,) * 3
FONT = {  # 3x5 glyphs, rows top to bottom, 3 bits each
    "0": (7, 5, 5, 5, 7),
    "1": (2, 6, 2, 2, 7),
    "2": (7, 1, 7, 4, 7),
    "3": (7, 1, 7, 1, 7),
    "4": (5, 5, 7, 1, 1),
    "5": (7, 4, 7, 1, 7),
    "6": (7, 4, 7, 5, 7),
    "7": (7, 1, 1, 1, 1),
    "8": (7, 5, 7, 5, 7),
    "9": (7, 5, 7, 1, 7),
    ".": (0, 0, 0, 0, 2),
}


class Canvas:
    """A white RGB image to draw dots and lines on, written as PNG without a plotting library."""

    def __init__(self) -> None:
        self.pixels = [[WHITE] * WIDTH for _ in range(HEIGHT)]

    def dot(self, x: int, y: int, color: tuple[int, ...], size: int = 1) -> None:
        for dy in range(-size + 1, size):
            for dx in range(-size + 1, size):
                if 0 <= x + dx < WIDTH and 0 <= y + dy < HEIGHT:
                    self.pixels[y + dy][x + dx] = color

    def line(self, a: tuple[int, int], b: tuple[int, int], color: tuple[int, ...], size: int = 1):  # noqa: ANN201
        steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for i in range(steps + 1):
            x = round(a[0] + (b[0] - a[0]) * i / steps)
            y = round(a[1] + (b[1] - a[1]) * i / steps)
            self.dot(x, y, color, size)

    def text(self, x: int, y: int, s: str, scale: int = 2) -> None:
        for glyph in s:
            for row, bits in enumerate(FONT.get(glyph, (0,) * 5)):
                for col in range(3):
                    if bits >> (2 - col) & 1:
                        for dy in range(scale):
                            for dx in range(scale):
                                self.dot(x + col * scale + dx, y + row * scale + dy, BLACK)
            x += 4 * scale

    def png(self) -> bytes:
        """The canvas as PNG bytes (zlib-compressed RGB rows, no filter)."""
        raw = b"".join(b"\0" + bytes(c for px in row for c in px) for row in self.pixels)

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def draw_curve(points: list[dict[str, float]], path: Path) -> None:
    """A line chart of ``points`` (multiplier -> rate) written to ``path`` as PNG."""
    canvas = Canvas()
    left, right, top, bottom = MARGIN + 10, WIDTH - MARGIN, MARGIN // 2, HEIGHT - MARGIN
    step = (right - left) / max(1, len(points) - 1)

    def xy(i: int, value: float) -> tuple[int, int]:
        return round(left + i * step), round(bottom - value * (bottom - top))

    for level in (0.0, 0.5, 1.0):
        canvas.line(xy(0, level), xy(len(points) - 1, level), GREY)
        canvas.text(4, xy(0, level)[1] - 5, f"{level:g}")
    canvas.line((left, top), (left, bottom), BLACK)
    for i, p in enumerate(points):
        canvas.text(xy(i, 0)[0] - 6, bottom + 8, f"{p['multiplier']:g}")
    for key, color in (("well_formed", BLUE), ("bridge", RED)):
        for i in range(len(points) - 1):
            canvas.line(xy(i, points[i][key]), xy(i + 1, points[i + 1][key]), color, 2)
        for i, p in enumerate(points):
            canvas.dot(*xy(i, p[key]), color, 4)
    path.write_bytes(canvas.png())
