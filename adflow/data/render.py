"""Drawing products and creatives with PIL: the visual side of the synthetic world.

Every visual cue the ground truth uses is drawn, so a vision model can learn it: the category is the
object's shape (and stripes), colour is its fill, style a mark on it; clutter is background noise; a
creative's prominence is the object's size, legibility the banner text's contrast, theme the canvas colour.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon", "ellipse", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 40, 40),
    "blue": (40, 70, 205),
    "green": (35, 160, 60),
    "yellow": (235, 205, 30),
    "purple": (130, 50, 175),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
}
STYLES = ("classic", "sport", "luxury", "casual")
THEMES: dict[str, tuple[int, int, int]] = {
    "warm": (245, 175, 120),
    "cool": (150, 190, 235),
    "dark": (45, 45, 60),
    "bright": (255, 250, 205),
}
Box = tuple[float, float, float, float]


def _polygon(shape: str, box: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "hexagon":
        return [
            (cx + w / 2 * math.cos(a), cy + h / 2 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]
        ]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.22
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + r * w * math.cos(a), cy + r * h * math.sin(a)))
        return pts
    if shape == "cross":
        t = 0.18
        return [
            (cx - t * w, y0), (cx + t * w, y0), (cx + t * w, cy - t * h), (x1, cy - t * h),
            (x1, cy + t * h), (cx + t * w, cy + t * h), (cx + t * w, y1), (cx - t * w, y1),
            (cx - t * w, cy + t * h), (x0, cy + t * h), (x0, cy - t * h), (cx - t * w, cy - t * h),
        ]  # fmt: skip
    raise ValueError(shape)


def draw_object(img: Image.Image, box: Box, shape: str, colour: str, style: str, striped: bool) -> None:
    """The product: a category shape filled with its colour, a style mark, stripes for the second family."""
    d = ImageDraw.Draw(img)
    fill = COLOURS[colour]
    outline = (212, 175, 55) if style == "luxury" else (0, 0, 0)
    width = max(1, int((box[2] - box[0]) / 12)) if style == "luxury" else 1
    if shape == "circle":
        d.ellipse(box, fill=fill, outline=outline, width=width)
    elif shape == "square":
        d.rectangle(box, fill=fill, outline=outline, width=width)
    elif shape == "ellipse":
        x0, y0, x1, y1 = box
        pad = (y1 - y0) * 0.22
        d.ellipse((x0, y0 + pad, x1, y1 - pad), fill=fill, outline=outline, width=width)
    else:
        d.polygon(_polygon(shape, box), fill=fill, outline=outline, width=width)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    contrast = (255, 255, 255) if sum(fill) < 380 else (0, 0, 0)
    if striped:
        for k in range(1, 4):
            y = y0 + h * (0.25 + 0.17 * k)
            d.line((x0 + w * 0.3, y, x1 - w * 0.3, y), fill=contrast, width=max(1, int(h / 20)))
    if style == "sport":
        d.line(
            (x0 + w * 0.3, y0 + h * 0.3, x1 - w * 0.3, y1 - h * 0.3), fill=contrast, width=max(1, int(w / 10))
        )
    elif style == "casual":
        r = max(1.0, w / 14)
        for fx, fy in ((0.4, 0.4), (0.6, 0.45), (0.5, 0.62)):
            cx, cy = x0 + w * fx, y0 + h * fy
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=contrast)


def draw_clutter(img: Image.Image, rng: np.random.Generator, level: float) -> None:
    """Random lines, boxes and blobs in random colours: the background noise a core-region detector removes."""
    d = ImageDraw.Draw(img)
    s = img.size[0]
    for _ in range(round(level * 30)):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = rng.uniform(0, s, 2)
        w, h = rng.uniform(s * 0.05, s * 0.35, 2)
        kind = rng.integers(0, 3)
        if kind == 0:
            d.line((x, y, x + w, y + h), fill=c, width=int(rng.integers(1, 4)))
        elif kind == 1:
            d.rectangle((x, y, x + w, y + h), outline=c, width=1)
        else:
            d.ellipse((x, y, x + w / 2, y + h / 2), fill=c)


def render_item(
    rng: np.random.Generator, size: int, shape: str, colour: str, style: str, striped: bool
) -> tuple[Image.Image, Box]:
    """A catalog photo: the product inside a random box on a cluttered background. Returns the box as fractions."""
    bg = tuple(int(v) for v in rng.integers(90, 200, 3))
    img = Image.new("RGB", (size, size), bg)
    draw_clutter(img, rng, float(rng.uniform(0.3, 1.0)))
    frac = float(rng.uniform(0.35, 0.7))
    w = frac * size
    x0 = float(rng.uniform(0, size - w))
    y0 = float(rng.uniform(0, size - w))
    box = (x0, y0, x0 + w, y0 + w)
    draw_object(img, box, shape, colour, style, striped)
    return img, (x0 / size, y0 / size, (x0 + w) / size, (y0 + w) / size)


_FONT = ImageFont.load_default()


def render_creative(
    rng: np.random.Generator,
    size: int,
    shape: str,
    colour: str,
    style: str,
    striped: bool,
    prominence: float,
    clutter: float,
    legibility: float,
    theme: str,
    text: str,
) -> Image.Image:
    """An ad creative: theme canvas, clutter, the product scaled by prominence, a banner whose text contrast is legibility."""
    img = Image.new("RGB", (size, size), THEMES[theme])
    draw_clutter(img, rng, clutter)
    banner_h = size // 6
    w = prominence * (size - banner_h)
    cx = size / 2 + float(rng.uniform(-0.05, 0.05)) * size
    cy = (size - banner_h) / 2
    box = (
        max(0.0, cx - w / 2),
        max(0.0, cy - w / 2),
        min(size - 1.0, cx + w / 2),
        min(size - banner_h - 1.0, cy + w / 2),
    )
    draw_object(img, box, shape, colour, style, striped)
    d = ImageDraw.Draw(img)
    banner = (230, 230, 230) if theme != "dark" else (30, 30, 30)
    d.rectangle((0, size - banner_h, size, size), fill=banner)
    target = (0, 0, 0) if theme != "dark" else (255, 255, 255)
    # legibility 0: text colour equals the banner (invisible); 1: full contrast.
    ink = tuple(int(b + legibility * (t - b)) for b, t in zip(banner, target, strict=True))
    d.text((3, size - banner_h + max(0, banner_h // 2 - 6)), text[:14], fill=ink, font=_FONT)
    return img
