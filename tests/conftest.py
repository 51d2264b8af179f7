"""Shared fixtures: one artifact cache per session (the ONNX export happens
once), the real CLI entry point run in-process, and a factory for suite files
that point at the bundled demo model and data."""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporters.cache import DEFAULT_CACHE_ENV, ArtifactCache
from harness.cli import main
from harness.spec.suite import BUNDLED_DIR, Suite, load_suite

DEMO_TOML = BUNDLED_DIR / "demo.toml"
DEMO_DIR = BUNDLED_DIR / "demo"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run where PyTorch sees a CUDA device (a GPU runner), and are skipped with the reason elsewhere."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU: no CUDA device visible to PyTorch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifact-cache")


@pytest.fixture(scope="session")
def cache(cache_dir: Path) -> ArtifactCache:
    return ArtifactCache(cache_dir)


@pytest.fixture(autouse=True)
def _shared_cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    monkeypatch.setenv(DEFAULT_CACHE_ENV, str(cache_dir))


@pytest.fixture(scope="session")
def demo_suite() -> Suite:
    return load_suite("demo")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def harness_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `harness ARGS...` through the real console-script entry point."""

    def invoke(*args: str | Path) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["harness", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        code = exit_info.value.code
        return CliResult(code if isinstance(code, int) else (0 if code is None else 1), captured.out, captured.err)

    return invoke


@pytest.fixture
def make_suite(tmp_path: Path) -> Callable[..., Path]:
    """Write a copy of the demo suite with absolute paths; `replace` edits its text, `manifest` swaps the dataset."""

    def write(replace: dict[str, str] | None = None, manifest: Path | None = None, name: str = "suite.toml") -> Path:
        text = DEMO_TOML.read_text()
        text = text.replace('weights = "demo/', f'weights = "{DEMO_DIR}/')
        text = text.replace('manifest = "demo/data/manifest.json"', f'manifest = "{manifest or DEMO_DIR / "data" / "manifest.json"}"')
        text = text.replace('dir = "../../golden/demo"', f'dir = "{tmp_path / "golden"}"')
        for old, new in (replace or {}).items():
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG file whose header declares width x height (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
