"""Nested records (metadata, environments) compared leaf by leaf, one human line per difference."""

from __future__ import annotations

from typing import Any


def metadata_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human lines for each metadata leaf that differs ('libraries.onnxruntime: 1.17 -> 1.18')."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(metadata_changes(a, b, f"{prefix}{key}."))
        elif a != b:
            lines.append(f"{prefix}{key}: {_short(a)} -> {_short(b)}")
    return lines


def _short(value: Any, limit: int = 100) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
