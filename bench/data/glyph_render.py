"""Font discovery, coverage scan and distorted rendering for the ``glyphs`` dataset.

The fonts are the DejaVu* and STIX* TrueType files shipped inside matplotlib
(``matplotlib/mpl-data/fonts/ttf``). :func:`scan_coverage` decides which code points become classes
and which fonts draw each of them; :class:`GlyphRenderer` turns one (code point, font, distortion)
into a uint8 image of shape (image_size, image_size), grey ink (255) on black (0).
Nothing here touches a global random number generator.
"""

from __future__ import annotations

import functools
import hashlib
import math
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

from bench.seeding import derive_seed, make_generator

#: Bumped whenever a change alters the rendered bytes, the class set or the split.
GENERATOR_VERSION = "1"

#: Unicode blocks eligible for classes: (name, first code point, last code point).
BLOCKS: tuple[tuple[str, int, int], ...] = (
    ("Basic Latin", 0x0000, 0x007F),
    ("Latin-1 Supplement", 0x0080, 0x00FF),
    ("Latin Extended-A", 0x0100, 0x017F),
    ("Latin Extended-B", 0x0180, 0x024F),
    ("IPA Extensions", 0x0250, 0x02AF),
    ("Greek and Coptic", 0x0370, 0x03FF),
    ("Cyrillic", 0x0400, 0x04FF),
    ("Cyrillic Supplement", 0x0500, 0x052F),
    ("Armenian", 0x0530, 0x058F),
    ("Georgian", 0x10A0, 0x10FF),
    ("Latin Extended Additional", 0x1E00, 0x1EFF),
    ("Greek Extended", 0x1F00, 0x1FFF),
    ("General Punctuation", 0x2000, 0x206F),
    ("Letterlike Symbols", 0x2100, 0x214F),
    ("Number Forms", 0x2150, 0x218F),
    ("Arrows", 0x2190, 0x21FF),
    ("Mathematical Operators", 0x2200, 0x22FF),
    ("Miscellaneous Technical", 0x2300, 0x23FF),
    ("Geometric Shapes", 0x25A0, 0x25FF),
    ("Miscellaneous Symbols", 0x2600, 0x26FF),
    ("Miscellaneous Mathematical Symbols-A", 0x27C0, 0x27EF),
    ("Supplemental Arrows-A", 0x27F0, 0x27FF),
    ("Supplemental Arrows-B", 0x2900, 0x297F),
    ("Miscellaneous Mathematical Symbols-B", 0x2980, 0x29FF),
    ("Supplemental Mathematical Operators", 0x2A00, 0x2AFF),
)
#: Unicode general-category initials kept: letters, numbers, symbols, punctuation.
VISIBLE_CATEGORIES = frozenset("LNSP")
#: Largest split unit in code points (blocks above this are cut into contiguous sub-blocks).
SPLIT_UNIT = 128
#: Pixel size of the coverage / homoglyph scan (independent of ``image_size``).
SCAN_PX = 32
#: Two classes merge when their scan bitmaps are identical in at least this share of shared fonts.
HOMOGLYPH_SHARE = 0.5
#: Rendering: canvas = SUPERSAMPLE * image_size; font em = EM_FRACTION * canvas.
SUPERSAMPLE = 3
EM_FRACTION = 0.75
#: Glyphs whose ink box is longer than this share of the canvas are shrunk (LANCZOS) to it.
MAX_INK_FRACTION = 0.62
#: Distortion ranges: rotation (degrees), scale, shear, translation (share of the side).
ROTATION_DEG, SCALE_RANGE, SHEAR, SHIFT = 15.0, (0.8, 1.15), 0.2, 0.1


def font_dir() -> Path:
    """The TrueType directory of the installed matplotlib."""
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_files() -> list[Path]:
    """DejaVu* and STIX* TTF files sorted by name (LastResortHE and TeX-encoded cm* excluded)."""
    return sorted(p for p in font_dir().glob("*.ttf") if p.name.startswith(("DejaVu", "STIX")))


def block_of(code_point: int) -> tuple[str, int, int] | None:
    """The eligible ``(name, start, end)`` block containing ``code_point``, or None."""
    for block in BLOCKS:
        if block[1] <= code_point <= block[2]:
            return block
    return None


def is_visible(code_point: int) -> bool:
    """True for a printable, visible character (category L*, N*, S* or P*) in an eligible block."""
    return block_of(code_point) is not None and unicodedata.category(chr(code_point))[0] in VISIBLE_CATEGORIES


def split_unit(code_point: int) -> str:
    """Name of the split unit holding ``code_point``: the block, or ``block [XXXX-YYYY]`` if cut."""
    name, start, end = block_of(code_point) or ("", code_point, code_point)
    if end - start + 1 <= SPLIT_UNIT:
        return name
    low = start + (code_point - start) // SPLIT_UNIT * SPLIT_UNIT
    return f"{name} [{low:04X}-{min(low + SPLIT_UNIT - 1, end):04X}]"


def class_name(code_point: int) -> str:
    """``U+XXXX`` (at least four upper-case hex digits)."""
    return f"U+{code_point:04X}"


@dataclass(frozen=True)
class Coverage:
    """Result of :func:`scan_coverage`.

    Attributes:
        fonts: font files, sorted by name; ``covering`` holds indices into it.
        classes: kept code points, ascending.
        covering: code point -> sorted indices of the fonts that draw it with non-empty ink.
        homoglyphs: dropped code point -> the kept code point it renders identically to.
    """

    fonts: list[Path]
    classes: list[int]
    covering: dict[int, list[int]]
    homoglyphs: dict[int, int]


def scan_coverage(fonts: list[Path], min_fonts: int) -> Coverage:
    """Memoised (per process) :func:`_scan`; callers must not mutate the result."""
    return _scan(tuple(fonts), min_fonts)


@functools.lru_cache(maxsize=4)
def _scan(fonts: tuple[Path, ...], min_fonts: int) -> Coverage:
    """Find the code points drawn (with ink) by at least ``min_fonts`` fonts, homoglyphs merged.

    Each font's cmap is read once with fontTools; each eligible glyph is rasterised once at
    :data:`SCAN_PX`. Code points whose bitmaps are identical to a lower code point's in at least
    :data:`HOMOGLYPH_SHARE` of their shared fonts (e.g. Latin ``A``, Greek ``Α``, Cyrillic ``А``)
    collapse onto the lowest one, since such classes could not be told apart.
    """
    covering: dict[int, list[int]] = defaultdict(list)
    digests: dict[tuple[int, int], bytes] = {}
    for index, path in enumerate(fonts):
        cmap = TTFont(path, lazy=True).getBestCmap() or {}
        font = ImageFont.truetype(str(path), SCAN_PX, layout_engine=ImageFont.Layout.BASIC)
        for cp in sorted(cmap):
            if not is_visible(cp):
                continue
            mask = font.getmask(chr(cp))
            if mask.getbbox() is None:
                continue
            covering[cp].append(index)
            digests[index, cp] = hashlib.sha256(repr(mask.size).encode() + bytes(mask)).digest()
    candidates = sorted(cp for cp, idx in covering.items() if len(idx) >= min_fonts)
    parent = {cp: cp for cp in candidates}

    def root(cp: int) -> int:
        while parent[cp] != cp:
            cp = parent[cp]
        return cp

    for index in range(len(fonts)):
        groups: dict[bytes, list[int]] = defaultdict(list)
        for cp in candidates:
            if (index, cp) in digests:
                groups[digests[index, cp]].append(cp)
        for group in groups.values():
            for i, a in enumerate(group):
                for b in group[i + 1 :]:
                    shared = set(covering[a]) & set(covering[b])
                    same = sum(digests[f, a] == digests[f, b] for f in shared)
                    if same >= HOMOGLYPH_SHARE * len(shared):
                        ra, rb = root(a), root(b)
                        parent[max(ra, rb)] = min(ra, rb)
    homoglyphs = {cp: root(cp) for cp in candidates if root(cp) != cp}
    classes = [cp for cp in candidates if cp not in homoglyphs]
    return Coverage(list(fonts), classes, {cp: covering[cp] for cp in classes}, homoglyphs)


@dataclass(frozen=True)
class Distortion:
    """One instance's random distortion; angles in degrees, shifts as a share of the side."""

    rotation: float
    scale: float
    shear: float
    shift_x: float
    shift_y: float
    stroke: int

    @classmethod
    def sample(cls, seed: int, code_point: int, instance: int) -> Distortion:
        """Draw from a generator seeded by ``derive_seed(seed, "glyphs", code_point, instance)``."""
        generator = make_generator(derive_seed(seed, "glyphs", code_point, instance))
        u = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        return cls(
            rotation=(2 * u[0] - 1) * ROTATION_DEG,
            scale=SCALE_RANGE[0] + (SCALE_RANGE[1] - SCALE_RANGE[0]) * u[1],
            shear=(2 * u[2] - 1) * SHEAR,
            shift_x=(2 * u[3] - 1) * SHIFT,
            shift_y=(2 * u[4] - 1) * SHIFT,
            stroke=int(u[5] < 0.5),
        )


class GlyphRenderer:
    """Renders glyphs at ``image_size``; caches one ``FreeTypeFont`` per font file."""

    def __init__(self, fonts: list[Path], image_size: int) -> None:
        """Prepare a renderer for ``fonts`` (indexed as in :class:`Coverage`) at ``image_size``."""
        self.fonts = fonts
        self.image_size = image_size
        self.canvas = SUPERSAMPLE * image_size
        self.em = max(1, round(EM_FRACTION * self.canvas))
        self.stroke_px = max(1, round(self.canvas / 96))
        self._cache: dict[int, ImageFont.FreeTypeFont] = {}

    def _font(self, index: int) -> ImageFont.FreeTypeFont:
        if index not in self._cache:
            path = str(self.fonts[index])
            self._cache[index] = ImageFont.truetype(path, self.em, layout_engine=ImageFont.Layout.BASIC)
        return self._cache[index]

    def ink_patch(self, code_point: int, font_index: int, stroke: int) -> Image.Image:
        """The glyph cropped to its ink box ('L' mode), shrunk to :data:`MAX_INK_FRACTION` if huge."""
        font, char, width = self._font(font_index), chr(code_point), stroke * self.stroke_px
        left, top, right, bottom = (math.floor(v) for v in font.getbbox(char, stroke_width=width))
        patch = Image.new("L", (right - left + 4, bottom - top + 4), 0)
        ImageDraw.Draw(patch).text(
            (2 - left, 2 - top), char, fill=255, font=font, stroke_width=width, stroke_fill=255
        )
        box = patch.getbbox()
        if box is None:
            raise RuntimeError(f"{class_name(code_point)} renders empty in {self.fonts[font_index].name}")
        patch = patch.crop(box)
        fit = MAX_INK_FRACTION * self.canvas / max(patch.size)
        if fit < 1:
            size = (max(1, round(patch.width * fit)), max(1, round(patch.height * fit)))
            patch = patch.resize(size, Image.Resampling.LANCZOS)
        return patch

    def render(self, code_point: int, font_index: int, distortion: Distortion) -> np.ndarray:
        """uint8 array of shape (image_size, image_size): the distorted glyph, centred by its ink box.

        The ink box centre goes to the canvas centre plus the shift (clamped so the distorted ink
        box stays on the canvas when it fits); the affine is applied with bilinear resampling on a
        ``SUPERSAMPLE``-times larger canvas, which is then box-filtered down to ``image_size``.
        """
        patch = self.ink_patch(code_point, font_index, distortion.stroke)
        theta = math.radians(distortion.rotation)
        cos, sin, s, k = math.cos(theta), math.sin(theta), distortion.scale, distortion.shear
        # forward map M = s * R(theta) @ [[1, k], [0, 1]] (patch offsets -> canvas offsets)
        m00, m01, m10, m11 = s * cos, s * (cos * k - sin), s * sin, s * (sin * k + cos)
        half_w, half_h = patch.width / 2, patch.height / 2
        reach_x = abs(m00) * half_w + abs(m01) * half_h
        reach_y = abs(m10) * half_w + abs(m11) * half_h
        centre = self.canvas / 2
        out_x = centre + _clamp(distortion.shift_x * self.canvas, centre - reach_x)
        out_y = centre + _clamp(distortion.shift_y * self.canvas, centre - reach_y)
        det = m00 * m11 - m01 * m10
        i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
        data = (i00, i01, half_w - i00 * out_x - i01 * out_y, i10, i11, half_h - i10 * out_x - i11 * out_y)
        canvas = patch.transform(
            (self.canvas, self.canvas),
            Image.Transform.AFFINE,
            data,
            resample=Image.Resampling.BILINEAR,
            fillcolor=0,
        )
        small = canvas.resize((self.image_size, self.image_size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.uint8)


def _clamp(shift: float, room: float) -> float:
    """``shift`` limited to ``[-room, room]`` (no shift at all when ``room`` is negative)."""
    room = max(0.0, room)
    return min(max(shift, -room), room)
