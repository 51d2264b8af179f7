"""Content-addressed artifact cache: keys, atomic builds, concurrent builders, CLI."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporters.cache import ArtifactCache, cache_key
from harness.core.environment import environment
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite


def test_key_depends_on_every_field() -> None:
    base = {"source": "abc", "opset": 18}
    assert cache_key(base) == cache_key(dict(reversed(base.items())))
    assert cache_key(base) != cache_key({**base, "opset": 19})


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    store = ArtifactCache(tmp_path)

    def broken(out: Path) -> None:
        out.write_bytes(b"half")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        store.get_or_build("onnx", {"k": 1}, "m.onnx", broken)
    assert store.entries() == []
    assert not any(p.name.startswith(".build-") for p in (tmp_path / "onnx").iterdir())


def test_two_concurrent_builders_of_one_key(tmp_path: Path) -> None:
    store = ArtifactCache(tmp_path)
    results: list[Path] = []

    def slow_build(out: Path) -> None:
        time.sleep(0.2)
        out.write_bytes(b"same bytes")

    threads = [
        threading.Thread(target=lambda: results.append(store.get_or_build("onnx", {"k": 2}, "m.onnx", slow_build))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == b"same bytes"
    assert len(store.entries()) == 1
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [results[0].parent.name]


def test_cache_cli_lists_and_clears(tmp_path: Path, harness_cli: Callable[..., object]) -> None:
    store = ArtifactCache(tmp_path / "c")
    store.get_or_build("onnx", {"k": 3}, "m.onnx", lambda out: out.write_bytes(b"x"))
    listing = harness_cli("cache", "ls", "--cache-dir", store.root)
    assert listing.code == 0 and "m.onnx" in listing.out
    cleared = harness_cli("cache", "clear", "--cache-dir", store.root)
    assert cleared.code == 0 and "removed 1 artifacts" in cleared.out
    assert not store.root.exists()


def test_doctor_names_every_runtime(harness_cli: Callable[..., object]) -> None:
    result = harness_cli("doctor")
    assert result.code == 0
    for name in ("torch-fp32", "ort-int8", "ov-fp16", "trt-int8", "torch-cuda-fp16", "ort-trt-fp16"):
        assert name in result.out
    assert "onnxruntime:" in result.out and "cpu:" in result.out
    env = environment()
    assert f"isa: {', '.join(env['isa']) or 'none of the tracked features'}" in result.out
    assert f"threads: {env['threads']} (of {env['cpus']} CPUs" in result.out


def test_provenance_hashes_every_file_of_an_artifact(demo_suite: Suite, cache: ArtifactCache) -> None:
    """An IR's .xml and .bin both count: a re-calibrated int8 file or other weights change the hash."""
    artifacts = SuiteRun(demo_suite, cache, limit=8).artifacts
    xml = artifacts.openvino_ir("fp32")
    expected = hashlib.sha256()
    for name in ("model.bin", "model.xml"):
        expected.update(f"{name}:{hashlib.sha256((xml.parent / name).read_bytes()).hexdigest()}\n".encode())
    assert artifacts.provenance["openvino:fp32"]["files_sha256"] == expected.hexdigest()
    onnx_file = artifacts.onnx_path("fp32")
    single = f"{onnx_file.name}:{hashlib.sha256(onnx_file.read_bytes()).hexdigest()}\n".encode()
    assert artifacts.provenance["onnx:fp32"]["files_sha256"] == hashlib.sha256(single).hexdigest()
