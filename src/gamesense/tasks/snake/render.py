"""Views of a ``GameState``: a compact text board for prompts, and frames / animated GIFs for humans.

Text view (``text_view``), e.g. on a 6x6 board::

    legend: .=empty H=head o=body t=tail A=apple; cells are (row, col), row 0 at the top, col 0 at the left
    ......
    ....A.
    ......
    .toH..
    ......
    ......
    head: (3, 3) moving RIGHT
    length: 3
    apple: (1, 4)

One character per cell and no separators, since every prompt token costs compute at each move.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gamesense.tasks.snake.game import GameState

EMPTY_CHAR = "."
HEAD_CHAR = "H"
BODY_CHAR = "o"
TAIL_CHAR = "t"
APPLE_CHAR = "A"

_LEGEND = (
    f"legend: {EMPTY_CHAR}=empty {HEAD_CHAR}=head {BODY_CHAR}=body {TAIL_CHAR}=tail {APPLE_CHAR}=apple; "
    "cells are (row, col), row 0 at the top, col 0 at the left"
)


def legend() -> str:
    """One line explaining the cell characters and the coordinate convention of ``text_view``."""
    return _LEGEND


def text_view(state: GameState, with_legend: bool = True) -> str:
    """The board as text: ``N`` rows of ``N`` characters, then head, length and apple lines.

    Args:
        state: the position to show.
        with_legend: start with the ``legend()`` line; pass False when the legend is already in the
            system prompt.

    Returns:
        Lines joined by ``"\\n"`` (no trailing newline): optional legend, the ``N`` board rows,
        ``head: (r, c) moving DIR``, ``length: L``, ``apple: (r, c)`` (``apple: none`` on a full
        board), and ``outcome: X`` once the game is over.
    """
    n = state.grid_size
    rows = [[EMPTY_CHAR] * n for _ in range(n)]
    for row, col in state.body[1:]:
        rows[row][col] = BODY_CHAR
    if len(state.body) > 1:
        tail_row, tail_col = state.body[-1]
        rows[tail_row][tail_col] = TAIL_CHAR
    rows[state.head[0]][state.head[1]] = HEAD_CHAR
    if state.apple is not None:
        rows[state.apple[0]][state.apple[1]] = APPLE_CHAR
    lines = [_LEGEND] if with_legend else []
    lines.extend("".join(row) for row in rows)
    lines.append(f"head: ({state.head[0]}, {state.head[1]}) moving {state.direction.name}")
    lines.append(f"length: {len(state.body)}")
    lines.append("apple: none" if state.apple is None else f"apple: ({state.apple[0]}, {state.apple[1]})")
    if state.outcome is not None:
        lines.append(f"outcome: {state.outcome}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- images

# Palette indices of the "P" frames.
_BG, _GAP, _BODY, _TAIL, _HEAD, _APPLE, _CRASH, _BAR, _TEXT = range(9)
_PALETTE = [
    (24, 24, 28),  # background
    (40, 40, 46),  # grid lines
    (70, 180, 80),  # body
    (35, 115, 50),  # tail
    (240, 210, 60),  # head
    (220, 45, 45),  # apple
    (255, 255, 255),  # head after a crash
    (0, 0, 0),  # header bar
    (230, 230, 230),  # header text
]
_FLAT_PALETTE = [channel for color in _PALETTE for channel in color]
_OUTCOME_CAPTIONS = {"wall": "HIT WALL", "self": "HIT ITSELF", "starved": "STARVED", "won": "WON"}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def render_frame(state: GameState, cell_px: int = 16) -> Image.Image:
    """Draw one position as a palette ("P") image.

    Args:
        state: the position.
        cell_px: side of a cell in pixels (>= 2).

    Returns:
        Image of ``N * cell_px`` wide and ``N * cell_px + bar`` high, where the top bar
        (``max(12, cell_px)`` px) shows score and step (or the outcome). A crashed head is white.

    Raises:
        ValueError: ``cell_px < 2``.
    """
    if cell_px < 2:
        raise ValueError(f"cell_px must be >= 2, got {cell_px}")
    n = state.grid_size
    codes = np.full((n, n), _BG, dtype=np.uint8)
    rows, cols = zip(*state.body)
    codes[rows, cols] = _BODY
    codes[state.body[-1]] = _TAIL
    if state.apple is not None:
        codes[state.apple] = _APPLE
    codes[state.head] = _CRASH if state.outcome in ("wall", "self") else _HEAD
    board = np.repeat(np.repeat(codes, cell_px, axis=0), cell_px, axis=1)
    if cell_px >= 4:  # 1 px grid lines keep adjacent body cells readable
        board[cell_px - 1 :: cell_px, :] = _GAP
        board[:, cell_px - 1 :: cell_px] = _GAP
    bar_px = max(12, cell_px)
    pixels = np.vstack([np.full((bar_px, n * cell_px), _BAR, dtype=np.uint8), board])
    image = Image.fromarray(pixels)
    image.putpalette(_FLAT_PALETTE)  # turns the "L" image into "P"
    caption = f"score {state.score} step {state.steps}"
    if state.outcome is not None:
        caption = f"{_OUTCOME_CAPTIONS.get(state.outcome, state.outcome)} score {state.score}"
    ImageDraw.Draw(image).text((2, 1), caption, fill=_TEXT, font=_font(bar_px - 3))
    return image


def save_gif(states: Sequence[GameState], path: str | Path, cell_px: int = 16, fps: float = 8) -> Path:
    """Write the positions as an animated GIF, one frame per state, looping, last frame held longer.

    Args:
        states: positions in play order (e.g. ``play_game(..., record_states=True).states``), all on
            the same board size. Frames always differ since the header shows the step; identical
            consecutive states would be merged into one frame by the GIF writer.
        path: output file (parent directories are created).
        cell_px: side of a cell in pixels.
        fps: frames per second of play; the last frame lasts ``max(1.5 s, 4 frames)``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: no states, mixed board sizes, ``fps <= 0`` or ``cell_px < 2``.
    """
    if not states:
        raise ValueError("states is empty: nothing to draw")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    sizes = {state.grid_size for state in states}
    if len(sizes) > 1:
        raise ValueError(f"states mix board sizes {sorted(sizes)}")
    frames = [render_frame(state, cell_px) for state in states]
    frame_ms = max(20, round(1000 / fps))  # browsers slow down GIF frames under 20 ms
    durations = [frame_ms] * len(frames)
    durations[-1] = max(1500, 4 * frame_ms)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path
