"""argparse `type=` callables shared by the commands: bad values exit with one readable line."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

# Every number has a ceiling: a bigger one overflows a database integer (a LIMIT,
# a counter) or a timedelta far from the flag that carried it.
INT_MAX = 2**31 - 1
SECONDS_MAX = 1e9  # about 31 years


def positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > INT_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {INT_MAX}, got {value}")
    return value


def int_up_to(maximum: int) -> Callable[[str], int]:
    """A positive_int no greater than `maximum` (an argparse `type=`)."""

    def parse(raw: str) -> int:
        value = positive_int(raw)
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {raw}")
    if value > SECONDS_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SECONDS_MAX:g}, got {raw}")
    return value


def non_negative_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {raw}")
    if value > SECONDS_MAX:
        raise argparse.ArgumentTypeError(f"must be at most {SECONDS_MAX:g}, got {raw}")
    return value
