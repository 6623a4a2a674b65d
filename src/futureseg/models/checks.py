"""Checks the model configs share (plain values in, ConfigError out)."""

from __future__ import annotations

import numbers


def is_int(value) -> bool:
    """An integer, numpy's included, but not a bool (YAML's `true` is no channel count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
