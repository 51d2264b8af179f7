"""Runs as plans of work units: whole-batch units, results equal to an unsplit run whatever the executor, worker
processes and their errors, `--resume` after a real interruption, stale units, Ray on a local 2-worker
instance, and start-up without torch."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporters.cache import DEFAULT_CACHE_ENV, ArtifactCache
from harness.core.errors import HarnessError
from harness.data.dataset import load_dataset
from harness.data.feed import DecoderNotApplicable, build_inputs
from harness.data.intake import IntakePolicy
from harness.data.parallel import Preparer
from harness.data.stack import StackSpec
from harness.judge.verdict import run_suite
from harness.run import execute as run_execute
from harness.run import plan as run_plan
from harness.run import worker as run_worker
from harness.run.execute import measure
from harness.run.executors.base import Execution
from harness.run.outputs import RunOutputs
from harness.run.plan import RunRequest, plan_run
from harness.run.worker import Worker
from harness.spec.suite import Suite, load_suite
from tests.test_onnx_testdata import _case, _model, _write_pb

HARNESS = Path(sys.executable).parent / "harness"


def _same_measurements(a: RunOutputs, b: RunOutputs) -> None:
    assert a.ids == b.ids and a.stages == b.stages and np.array_equal(a.labels, b.labels)
    assert list(a.inferences) == list(b.inferences)
    for name, inference in a.inferences.items():
        other = b.inferences[name]
        assert np.array_equal(inference.predictions, other.predictions), name
        assert all(np.array_equal(v, other.outputs[k]) for k, v in inference.outputs.items()), name


def test_plan_cuts_whole_batches_and_names_each_unit_by_what_it_reads(demo_suite: Suite, make_suite: Callable[..., Path]) -> None:
    plan = plan_run(demo_suite, RunRequest(("ort-fp32",), 32, limit=200, chunk=50))  # 50 -> 64: whole batches
    assert [(u.start, u.stop) for u in plan.units] == [(0, 64), (64, 128), (128, 192), (192, 200)]
    assert all(u.runtimes == ("torch-fp32", "ort-fp32") and u.device == "cpu" for u in plan.units)
    assert plan.samples == 200 and plan.requested == ("ort-fp32",)
    unit = plan.units[1]
    assert run_plan.WorkUnit.from_dict(json.loads(json.dumps(unit.describe()))) == unit  # plain JSON, whole
    assert len({u.key for u in plan.units}) == 4
    other_stack = plan_run(demo_suite, RunRequest(("ort-fp32",), 32, limit=200, chunk=50, stack=demo_suite.stack_named("opencv-service")))
    edited = plan_run(load_suite(str(make_suite({"description = ": "description = 'edited' #"}))), RunRequest(("ort-fp32",), 32, limit=200))
    assert other_stack.units[0].key != unit.key != edited.units[0].key
    sharded = plan_run(demo_suite, RunRequest(("ort-fp32",), 32, limit=200, shard=(2, 3), chunk=64))
    assert [(u.start, u.stop) for u in sharded.units] == [(67, 128), (128, 133)]


def test_gpu_runtimes_get_their_own_units_of_the_same_ranges(demo_suite: Suite, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_plan, "validate_runtimes", lambda names: None)  # planning only: no GPU here
    plan = plan_run(demo_suite, RunRequest(("ort-fp32", "trt-fp16", "trt-int8"), 32, limit=100, chunk=64))
    assert [(u.start, u.device, u.runtimes) for u in plan.units] == [
        (0, "cpu", ("torch-fp32", "ort-fp32")),
        (0, "gpu", ("trt-fp16", "trt-int8")),
        (64, "cpu", ("torch-fp32", "ort-fp32")),
        (64, "gpu", ("trt-fp16", "trt-int8")),
    ]
    assert [[u.device for u in r] for r in plan.ranges()] == [["cpu", "gpu"], ["cpu", "gpu"]]


@pytest.mark.parametrize("threads", ["1", "2"])
def test_units_and_worker_processes_measure_what_one_unsplit_run_does(
    demo_suite: Suite, cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch, threads: str
) -> None:
    monkeypatch.setenv("HARNESS_THREADS", threads)  # 1 on 2 cores: a core is left for a decode process, one range ahead
    request = RunRequest(("ort-fp32", "ov-int8"), 32, limit=200)
    whole = measure(demo_suite, request, cache, Execution(workers=0))
    execution = Execution(workers=len(os.sched_getaffinity(0)) - 1 if threads == "1" else 2)
    split = measure(demo_suite, dataclasses.replace(request, chunk=40), cache, execution)  # 4 units
    _same_measurements(whole, split)
    assert split.requested == ("ort-fp32", "ov-int8") and list(split.inferences) == ["torch-fp32", "ort-fp32", "ov-int8"]
    overlapped = threads == "1" and len(os.sched_getaffinity(0)) > 1
    assert ("one range ahead" in execution.log[0]) == overlapped, execution.log


def _dataset(tmp_path: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(3)
    (tmp_path / "eval").mkdir(parents=True)
    for name in names:
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buf, format="PNG" if name.endswith(".png") else "JPEG")
        (tmp_path / "eval" / name).write_bytes(buf.getvalue())
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"classes": ["a"], "splits": {"eval": [{"file": f"eval/{n}", "label": 0} for n in names]}}))
    return manifest


def test_worker_processes_give_serial_tensors_and_count_unreadable_images_over_every_part(tmp_path: Path) -> None:
    names = [f"{i:02d}.png" if i in (5, 40, 69) else f"{i:02d}.jpg" for i in range(70)]
    samples = load_dataset(_dataset(tmp_path, names), "eval").samples
    stack = StackSpec(resize_size=36, crop=32)
    with Preparer(workers=2, part_size=16) as preparer:
        parallel = preparer.submit(samples, stack, IntakePolicy()).result()
        serial = build_inputs(samples, stack)
        assert parallel.ids == serial.ids and parallel.stages == serial.stages and np.array_equal(parallel.tensors, serial.tensors)
        jpeg_only = dataclasses.replace(stack, decoder="simplejpeg")
        with pytest.raises(DecoderNotApplicable, match=r"cannot read 3/70 samples \(PNG 3; first: .*05.png\)"):
            preparer.submit(samples, jpeg_only, IntakePolicy()).result()
        (tmp_path / "eval" / "33.jpg").write_bytes(b"not a picture")
        with pytest.raises(HarnessError, match=r"eval/33.jpg: cannot decode image with 'pillow'") as raised:
            preparer.submit(samples, stack, IntakePolicy()).result()
    assert type(raised.value) is HarnessError and raised.value.fix  # the worker's error, whole


def test_a_unit_planned_for_other_inputs_is_refused(demo_suite: Suite, cache: ArtifactCache) -> None:
    unit = plan_run(demo_suite, RunRequest(("ort-fp32",), 32, limit=32)).units[0]
    stale = dataclasses.replace(unit, identity=unit.identity | {"weights_sha256": "0" * 64})
    with pytest.raises(HarnessError, match=r"work unit \w+ was planned for other inputs of .*demo.toml \(weights_sha256 differ here\)"):
        Worker(cache).execute(stale)


def _run_args(suite: Path, report: Path, *extra: str) -> list[str]:
    runtimes = ("--runtime", "ort-fp32", "--runtime", "ov-fp32")
    return ["run", "--suite", str(suite), *runtimes, "--no-golden", "--chunk", "32", "--repeat", "2", "--report-dir", str(report), *extra]


def test_an_interrupted_run_resumes_from_its_finished_units_and_reports_the_same(
    make_suite: Callable[..., Path], tmp_path: Path, cache_dir: Path, harness_cli: Callable[..., object]
) -> None:
    suite = make_suite()
    assert harness_cli(*_run_args(suite, tmp_path / "whole")).code == 0
    assert not (tmp_path / "whole" / "units").exists()  # a finished run keeps its results in outputs.npz only
    units = tmp_path / "cut" / "units"
    env = os.environ | {DEFAULT_CACHE_ENV: str(cache_dir)}
    # the run yields the CPU to this loop (niced), so the interrupt lands mid-run however loaded the machine is
    process = subprocess.Popen(
        [str(HARNESS), *_run_args(suite, tmp_path / "cut")], env=env, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(15)
    )
    deadline = time.monotonic() + 120
    while len(list(units.glob("*.npz"))) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err.splitlines()[-1]
    done = len(list(units.glob("*.npz")))
    assert 1 <= done < 16 and (units / "plan.json").is_file() and not (tmp_path / "cut" / "report.json").exists()
    resumed = harness_cli(*_run_args(suite, tmp_path / "cut", "--resume"))
    assert resumed.code == 0
    assert f"resumed: {done} of 16 units already done" in resumed.err
    _same_measurements(RunOutputs.load(tmp_path / "whole"), RunOutputs.load(tmp_path / "cut"))
    whole, cut = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("whole", "cut"))
    assert cut["execution"]["resumed_units"] == done and whole["execution"]["units"] == cut["execution"]["units"] == 16
    assert [(r["runtime"], r["metric"], r["passed"], r["determinism"]) for r in whole["results"]] == [
        (r["runtime"], r["metric"], r["passed"], r["determinism"]) for r in cut["results"]
    ]


def test_resume_after_the_suite_changed_redoes_every_unit(
    make_suite: Callable[..., Path], tmp_path: Path, harness_cli: Callable[..., object], demo_suite: Suite, cache: ArtifactCache
) -> None:
    suite = make_suite()
    plan = plan_run(load_suite(str(suite)), RunRequest(("ort-fp32", "ov-fp32"), 32, repeat=2, chunk=32))
    store = run_worker.ResultStore(tmp_path / "r" / "units", plan)
    store.put(plan.units[0], Worker(cache).execute(plan.units[0]))  # one unit of the old suite done
    suite.write_text(suite.read_text().replace("description = ", "description = 'changed' #"))
    resumed = harness_cli(*_run_args(suite, tmp_path / "r", "--resume", "--limit", "64"))
    assert resumed.code == 0 and "resumed: 0 of 2 units already done" in resumed.err


def test_ray_executor_on_a_local_two_worker_instance_reports_what_the_local_one_does(demo_suite: Suite, cache: ArtifactCache) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    request = RunRequest(("ort-fp32", "ov-int8"), 32, limit=128, chunk=32)
    local, local_measured = run_suite(demo_suite, request, cache, execution=Execution())
    execution = Execution("ray", workers=2)
    remote, remote_measured = run_suite(demo_suite, request, cache, execution=execution)
    assert "ray executor: 4 units on 2 cpu actor(s)" in execution.log
    _same_measurements(local_measured, remote_measured)
    assert [r.describe() | {"infer_seconds": 0} for r in local.results] == [r.describe() | {"infer_seconds": 0} for r in remote.results]


def test_gpu_units_on_a_ray_cluster_without_gpus_are_refused(
    demo_suite: Suite, cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    monkeypatch.setattr(run_plan, "validate_runtimes", lambda names: None)  # planned as on a GPU runner; never opened here
    plan = plan_run(demo_suite, RunRequest(("trt-fp16",), 32, limit=32, reference=False))
    with pytest.raises(HarnessError, match="work units of GPU runtimes, but the Ray cluster has no GPU"):
        run_execute.execute(plan, cache, Execution("ray", workers=1))


def test_ray_executor_without_ray_is_one_line(
    monkeypatch: pytest.MonkeyPatch, harness_cli: Callable[..., object], make_suite: Callable[..., Path], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where the extra is not installed
    result = harness_cli(*_run_args(make_suite(), tmp_path / "r", "--executor", "ray", "--limit", "32"))
    assert (
        result.code == 2
        and result.err.strip() == "error: --executor ray needs Ray, which is not installed (pip install 'sysnoise-harness[ray]')"
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args",
    [["--help"], ["list"], ["run", "--onnx", "{model}", "--inputs", "{data}", "--runtime", "ort-fp32", "--report-dir", "{report}"]],
    ids=["help", "list", "run-onnx"],
)
def test_start_up_imports_no_torch_and_no_backend_it_does_not_use(tmp_path: Path, args: list[str]) -> None:
    model = _model(tmp_path / "tiny.onnx")
    inputs, expected = _case()
    _write_pb(tmp_path / "data" / "test_data_set_0", "input", inputs)
    _write_pb(tmp_path / "data" / "test_data_set_0", "output", expected)
    argv = [a.format(model=model, data=tmp_path / "data", report=tmp_path / "report") for a in args]
    probe = (
        "import sys\nfrom harness.cli import cli\n"
        f"code = cli.main({argv!r}, standalone_mode=False)\n"
        "print(code, sorted(m for m in ('torch', 'torchvision', 'openvino', 'ray', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] in ("0 []", "None []"), done.stdout[-500:]


def test_an_executor_of_ones_own_is_a_registered_name(demo_suite: Suite, cache: ArtifactCache) -> None:
    """`register_executor` adds an executor the run machinery finds by name (it imports none): units in reverse
    order on one Worker give what the local executor measures; an unknown name is one line."""
    from harness.run.executors import EXECUTORS, register_executor

    class Backwards:
        def __init__(self, cache: ArtifactCache, execution: Execution, _prepared: object = None) -> None:
            self.worker = Worker(cache)

        def run(self, plan: object, todo: list, store: run_worker.ResultStore, progress: object, execution: Execution) -> None:
            execution.log.append(f"backwards: {len(todo)} units")
            for unit in reversed(todo):
                store.put(unit, self.worker.execute(unit))

    register_executor("backwards")(Backwards)
    try:
        request = RunRequest(("ort-fp32",), 32, limit=96, chunk=32)
        backwards = Execution("backwards")
        _same_measurements(measure(demo_suite, request, cache), measure(demo_suite, request, cache, backwards))
        assert backwards.log == ["backwards: 3 units"]  # 3 ranges of 32 samples, torch-fp32 and ort-fp32 in one cpu unit each
    finally:
        del EXECUTORS["backwards"]
    with pytest.raises(HarnessError, match="unknown executor 'backwards'"):
        measure(demo_suite, request, cache, Execution("backwards"))
