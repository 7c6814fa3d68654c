"""argparse types shared by the command line and the study's options: each parses one value or
raises argparse.ArgumentTypeError with a one-line message. Imports nothing heavy."""
from __future__ import annotations

import argparse
import math


def _bounded(kind: type, strict: bool):
    """An argparse type: a number of `kind` that is > 0 (strict) or >= 0, else a one-line error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not (value > 0 if strict else value >= 0):
            raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} 0")
        return value

    parse.__name__ = f"{'positive' if strict else 'non-negative'} {kind.__name__}"
    return parse


positive_int, nonnegative_int = _bounded(int, True), _bounded(int, False)
positive_float, nonnegative_float = _bounded(float, True), _bounded(float, False)


def parse_scales(text: str) -> tuple[float, ...]:
    """`1,0.707,1.414` -> (1.0, 0.707, 1.414); every scale > 0."""
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--scales {text!r}: give numbers separated by commas, e.g. 1,0.707,1.414") from None
    if not scales or any(not (math.isfinite(s) and s > 0) for s in scales):
        raise argparse.ArgumentTypeError(f"--scales {text!r}: every scale must be a finite number > 0")
    return scales


def parse_box(text: str) -> tuple[float, float, float, float]:
    """`x1,y1,x2,y2` with x2 > x1 and y2 > y1."""
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise argparse.ArgumentTypeError(f"--box {text!r}: give x1,y1,x2,y2 with x2 > x1 and y2 > y1")
    return box
