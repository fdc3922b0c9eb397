"""Labelled comparison grids: one row per face, columns LR | bicubic | SR | HR.

Pure functions of uint8 arrays to PIL images (no I/O), so evaluation and the trainer's
per-epoch samples draw them the same way. The LR image is enlarged by nearest
neighbour to the HR size so its pixels stay visible; the others are shown as they are.
Text uses PIL's built-in default font (nothing to download).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DEFAULT_LABELS = ("LR (nearest)", "bicubic", "SR", "HR")
GAP = 2  # pixels between cells
MARGIN = 4  # padding around text
BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)

Row = tuple[str, Any, Any, Any, Any]  # (name, lr, bicubic, sr, hr) uint8 HxWx3 arrays


def _as_image(array: Any, what: str) -> Image.Image:
    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"{what} must be a uint8 HxWx3 image, got {a.dtype} {a.shape}")
    return Image.fromarray(a, "RGB")


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _row_cells(row: Row, labels: Sequence[str]) -> list[Image.Image]:
    name, lr, bicubic, sr, hr = row
    hr_img = _as_image(hr, f"HR of {name}")
    cells = [_as_image(lr, f"LR of {name}").resize(hr_img.size, Image.NEAREST)]
    for image, label in zip((bicubic, sr), labels[1:3]):
        cell = _as_image(image, f"{label} of {name}")
        if cell.size != hr_img.size:
            raise ValueError(f"{label} of {name} is {cell.size}, HR is {hr_img.size}")
        cells.append(cell)
    return [*cells, hr_img]


def _grid_cells(grid: str, label_kind: str, rows: Sequence[Row], labels: Sequence[str]):
    """Every face's four cells and the common cell size; ValueError naming `grid` otherwise."""
    if not rows:
        raise ValueError(f"{grid} needs at least one row")
    if len(labels) != 4:
        raise ValueError(f"{grid} needs 4 {label_kind} labels, got {len(labels)}")
    cells = [_row_cells(row, labels) for row in rows]
    size = cells[0][-1].size
    if any(c[-1].size != size for c in cells):
        raise ValueError("all faces in one grid must have the same HR size")
    return cells, size


def sample_grid(rows: Sequence[Row], labels: Sequence[str] = DEFAULT_LABELS) -> Image.Image:
    """Grid image: a header with the column labels, then one row per face with its
    name in a left gutter. `rows` are (name, lr, bicubic, sr, hr) uint8 HxWx3 arrays."""
    cells, (cell_w, cell_h) = _grid_cells("sample_grid", "column", rows, labels)

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = max(_text_size(measure, t, font)[1] for t in [*labels, *(r[0] for r in rows)])
    gutter = max(_text_size(measure, str(r[0]), font)[0] for r in rows) + 2 * MARGIN
    header = text_h + 2 * MARGIN

    width = gutter + 4 * cell_w + 3 * GAP
    height = header + len(rows) * cell_h + (len(rows) - 1) * GAP
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for col, label in enumerate(labels):
        label_w = _text_size(draw, label, font)[0]
        x = gutter + col * (cell_w + GAP) + max(0, (cell_w - label_w) // 2)
        draw.text((x, MARGIN), label, fill=TEXT, font=font)
    for r, (row, row_cells) in enumerate(zip(rows, cells)):
        y = header + r * (cell_h + GAP)
        draw.text((MARGIN, y + (cell_h - text_h) // 2), str(row[0]), fill=TEXT, font=font)
        for col, cell in enumerate(row_cells):
            grid.paste(cell, (gutter + col * (cell_w + GAP), y))
    return grid


def face_row(row: Row, labels: Sequence[str] = DEFAULT_LABELS) -> Image.Image:
    """The labelled grid of a single face (one row)."""
    return sample_grid([row], labels)


def card_grid(rows: Sequence[Row], labels: Sequence[str] = DEFAULT_LABELS) -> Image.Image:
    """The same cells transposed for MLflow's image card: one column per face, one row
    per kind (LR | bicubic | SR | HR), the kind in a left gutter. The card draws its image
    in a square box under the run's name, so a grid wider than tall fits it whole where
    `sample_grid`'s tall one (five faces, four kinds) is cut at the bottom."""
    cells, (cell_w, cell_h) = _grid_cells("card_grid", "row", rows, labels)

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    gutter = max(_text_size(measure, t, font)[0] for t in labels) + 2 * MARGIN
    text_h = max(_text_size(measure, t, font)[1] for t in labels)
    width = gutter + len(rows) * cell_w + (len(rows) - 1) * GAP
    height = 4 * cell_h + 3 * GAP
    grid = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for kind, label in enumerate(labels):
        y = kind * (cell_h + GAP)
        draw.text((MARGIN, y + (cell_h - text_h) // 2), label, fill=TEXT, font=font)
        for col, face in enumerate(cells):
            grid.paste(face[kind], (gutter + col * (cell_w + GAP), y))
    return grid
