"""`harness` command line: list, export, run, localize, merge, report, matrix, golden diff|update, cache, schema, doctor.

Exit codes: 0 every check passed, 1 a check failed, 2 usage or input error
(one line on stderr naming the file or value and the fix).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporters.artifacts import PRECISIONS, ModelArtifacts
from exporters.cache import ArtifactCache, default_cache_dir
from exporters.rewrites import MODEL_VARIANTS
from harness import api
from harness.analysis.matrix import AXES, DEFAULT_AXES, run_matrix
from harness.analysis.onnx_testdata import Judging, run_test_data
from harness.core.environment import environment
from harness.core.errors import HarnessError, exit_interrupted
from harness.core.plugins import load_installed, load_plugins
from harness.data.colour import COLOUR_PATHS
from harness.data.decoders import DECODERS, decoder_unavailable
from harness.data.resizers import RESIZERS
from harness.judge.golden import GoldenStore, golden_store
from harness.judge.review import GoldenChange
from harness.judge.verdict import RunReport, judge_run
from harness.report.diff import DIFF_HEADERS, diff_reports, load_report
from harness.report.publish import publish
from harness.report.tables import render_report, render_table, write_report_files
from harness.run.executors import EXECUTORS, Execution
from harness.run.executors.local import POOL_FROM
from harness.run.outputs import RunOutputs
from harness.run.outputs import merge as merge_outputs
from harness.run.plan import DEFAULT_CHUNK
from harness.run.prepared import SuiteRun
from harness.run.worker import UNITS_DIR
from harness.spec.suite import BUNDLED_DIR, Suite, bundled_suites, load_suite, suite_names
from runtimes import RUNTIMES

# Piped output (CI logs) gets a wide fixed width so tables are not truncated.
console = Console(width=None if sys.stdout.isatty() else 200)
progress_console = Console(stderr=True, soft_wrap=True)

suite_option = click.option("--suite", "suite_name", metavar="NAME|FILE", help="Bundled suite name or path to a suite .toml file.")
cache_option = click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Artifact cache (default: $HARNESS_CACHE_DIR or ~/.cache/sysnoise-harness).",
)
golden_dir_option = click.option("--golden-dir", type=click.Path(path_type=Path), default=None, help="Override the suite's golden folder.")
batch_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=None, help="Batch size fed to every runtime (default: the suite's)."
)
stack_option = click.option(
    "--stack",
    "stack_name",
    metavar="NAME",
    help="Feed the suite through its [stacks.NAME] instead of the reference stack (its goldens: GOLDEN_DIR/stacks/NAME).",
)
runtime_option = click.option(
    "--runtime", "runtimes", multiple=True, metavar="NAME", help="Runtime to run (repeatable); 'all' = every available one."
)


def report_dir_option(command: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    return click.option(
        "--report-dir",
        type=click.Path(path_type=Path),
        default=None,
        help=f"Folder of the report files (default: reports/<suite>/{command}: suites and commands never share one).",
    )


def report_folder(given: Path | None, suite: str, command: str) -> Path:
    return given or Path("reports") / suite / command


PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal (a CI log)


def progress_lines() -> Callable[[str, int], Callable[[], None]]:
    """A tracker for logs: a stage that runs longer than PROGRESS_EVERY seconds says how far it got every
    PROGRESS_EVERY seconds and when it completes; a quick one says nothing (as a terminal's bars vanish)."""
    every, start = PROGRESS_EVERY, time.monotonic()

    def track(description: str, total: int) -> Callable[[], None]:
        done, said, talking = 0, time.monotonic(), False

        def advance() -> None:
            nonlocal done, said, talking
            done += 1
            now = time.monotonic()
            if now - said >= every or (talking and done == total):
                said, talking = now, True
                progress_console.print(f"{description}: {done}/{total} ({now - start:.0f} s)", highlight=False)

        return advance

    return track


@contextmanager
def tracking() -> Iterator[Callable[[str, int], Callable[[], None]]]:
    """Rich progress bars on stderr, handed to the pipeline as a tracker; progress lines when stderr is a log."""
    if not progress_console.is_terminal:
        yield progress_lines()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=progress_console, transient=True) as progress:

        def track(description: str, total: int) -> Callable[[], None]:
            task = progress.add_task(description, total=total)
            return lambda: progress.advance(task)

        yield track


def _require_suite(suite_name: str | None) -> Suite:
    if not suite_name:
        raise HarnessError("no suite given", f"pass --suite NAME (bundled: {', '.join(bundled_suites())}) or --suite FILE.toml")
    return load_suite(suite_name)


def _cache(cache_dir: Path | None) -> ArtifactCache:
    return ArtifactCache(cache_dir or default_cache_dir())


def _expand_runtimes(requested: tuple[str, ...], default: tuple[str, ...]) -> list[str]:
    """Requested names in order; 'all' becomes every available runtime (skipped ones are named)."""
    names: list[str] = []
    for name in requested or default:
        if name != "all":
            names.append(name)
            continue
        for spec in RUNTIMES.values():
            reason = spec.unavailable_reason()
            if reason:
                progress_console.print(f"skipping {spec.name}: {escape(reason)}")
            else:
                names.append(spec.name)
    return list(dict.fromkeys(names))


def runtime_table(probe: bool) -> Table:
    """Every runtime and whether it runs here; without `probe`, what is known without importing its library."""
    table = Table(title="runtimes")
    for column in ("name", "backend", "device", "precision", "status"):
        table.add_column(column)
    for spec in RUNTIMES.values():
        reason = spec.unavailable_reason(probe)
        if reason:
            status = f"[red]unavailable: {escape(reason)}[/red]"
        elif spec.probe and not probe:
            status = "[yellow]installed (`harness doctor` checks that it runs)[/yellow]"
        else:
            status = "[green]available[/green]"
        table.add_row(spec.name, spec.backend, spec.device, spec.precision, status)
    return table


def gpu_summary() -> str:
    """GPU name and driver as nvidia-smi and PyTorch see them, or why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        query = [smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, check=False)
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip().replace("\n", "; ")
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return "none (no nvidia-smi, PyTorch sees no CUDA device)"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE",
    help="Import a plugin module first (repeatable): it registers tasks, decoders, resizers, colour paths, variants.",
)
def cli(plugins: tuple[str, ...]) -> None:
    """Export a model, feed identical inputs to several runtimes, diff against goldens."""
    load_installed()
    load_plugins(plugins, Path.cwd())


@cli.command("list")
def list_cmd() -> None:
    """Suites, runtimes (available or why not) and stack components."""
    suites = Table(title="suites")
    suites.add_column("name")
    suites.add_column("description")
    suites.add_column("stacks")
    for name in bundled_suites():
        suite = load_suite(name)
        suites.add_row(name, suite.description, ", ".join(suite.stack_names))
    console.print(suites)
    console.print(runtime_table(probe=False))
    console.print("stack components:")
    console.print(f"  decoders: {', '.join(d + (' (unavailable)' if decoder_unavailable(d) else '') for d in DECODERS)}")
    console.print(f"  resize:   {', '.join(sorted(RESIZERS))}")
    console.print(f"  colour:   {', '.join(sorted(COLOUR_PATHS))}")
    console.print(f"  model variants: {', '.join(MODEL_VARIANTS)}")
    console.print(f"bundled suites live in {BUNDLED_DIR}")


EXPORT_TARGETS = ("onnx", "openvino", "tensorrt")


@cli.command()
@suite_option
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--target", type=click.Choice(EXPORT_TARGETS), default="onnx", show_default=True)
@click.option(
    "--keep-fp32",
    "keep_fp32",
    metavar="auto|LAYER,...",
    help="fp16/int8: keep these layers (PyTorch module names) in FP32, or 'auto': the most sensitive ones until the tolerance passes.",
)
@click.option(
    "--runtime", "judge_runtime", metavar="NAME", help="With --keep-fp32 auto: the runtime that judges (default: ort-<precision>)."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="With --keep-fp32 auto: judge on the first N samples.")
@report_dir_option("export")
@cache_option
def export(
    suite_name: str | None,
    precision: str,
    target: str,
    keep_fp32: str | None,
    judge_runtime: str | None,
    limit: int | None,
    report_dir: Path | None,
    cache_dir: Path | None,
) -> None:
    """Export to ONNX (parity-checked against PyTorch), a precision variant, OpenVINO IR or a TensorRT engine."""
    suite = _require_suite(suite_name)
    if keep_fp32 and precision == "fp32":
        raise HarnessError("--keep-fp32 keeps layers of a reduced-precision model", "add --precision fp16 or --precision int8")
    with tracking() as track:
        auto = keep_fp32 == "auto"
        run = SuiteRun(suite, _cache(cache_dir), limit=limit if auto else suite.export.parity_samples, track=track)
        artifacts = run.artifacts
        if auto:
            artifacts = _fallback(run, judge_runtime or f"ort-{precision}", report_folder(report_dir, suite.name, "export"))
        elif keep_fp32:
            artifacts = artifacts.derive(keep_fp32={precision: tuple(k.strip() for k in keep_fp32.split(",") if k.strip())})
        builders = {"onnx": artifacts.onnx_path, "openvino": artifacts.openvino_ir, "tensorrt": artifacts.tensorrt_engine}
        start = time.perf_counter()
        path = builders[target](precision)
        seconds = time.perf_counter() - start
    for line in run.artifacts.log + artifacts.log:
        console.print(escape(line))
    for label, info in artifacts.provenance.items():
        console.print(f"{label}: " + escape(json.dumps(info, default=str)))
    console.print(f"recipe: {escape(' -> '.join(artifacts.recipe(precision, target)))}")
    console.print(f"{target} {precision}: {path} ({seconds:.1f}s)")
    kept = artifacts.keep_fp32.get(precision, ())
    if keep_fp32 and kept != suite.export.keep_for(precision):
        listed = ", ".join(f'"{k}"' for k in kept)
        console.print(escape(f"to run and record goldens with it, set in [export] of {suite.path}: {precision}_keep_fp32 = [{listed}]"))


def _fallback(run: SuiteRun, runtime: str, report_dir: Path) -> ModelArtifacts:
    """`--keep-fp32 auto`: rank the layers, keep them one by one until the tolerance passes; print the trade."""
    from harness.analysis.sensitivity import TRIAL_HEADERS, Trials, write_sensitivity

    trials = Trials(run, runtime, run.suite.run.batch_size)
    baseline = trials.trial(())
    if baseline.passed:  # nothing to rank: every layer's trial would be wasted
        console.print(f"{runtime} already passes with no layer kept in FP32: nothing to keep")
        return run.artifacts
    sensitivity = trials.sensitivity(baseline)
    render_table(console, f"{runtime}: one layer kept in FP32 at a time ({sensitivity.samples} samples)", TRIAL_HEADERS, sensitivity.rows())
    steps = trials.fallback(sensitivity.ranking())
    render_table(console, "fallback: layers kept in sensitivity order", TRIAL_HEADERS, [t.row(str(i + 1)) for i, t in enumerate(steps)])
    for path in write_sensitivity(report_dir, run.suite.name, sensitivity, steps, None):
        console.print(f"wrote {path}")
    base = sensitivity.baseline
    final = steps[-1]
    if not final.passed:
        raise HarnessError(
            f"{runtime} still fails with every layer kept in FP32 ({', '.join(final.kept)})",
            "the drift is not in one layer's precision: run `harness localize` and check the stack and the export",
        )
    console.print(
        f"kept {len(final.kept)} layer(s) in FP32: {', '.join(final.kept)}; {run.task.metric_name} {base.comparison.metric:.4f} -> "
        f"{final.comparison.metric:.4f} (reference {final.comparison.metric_baseline:.4f}), flips {len(base.comparison.flips)} -> "
        f"{len(final.comparison.flips)}, weights {base.size_bytes / 1e6:.3f} -> {final.size_bytes / 1e6:.3f} MB"
    )
    return run.artifacts.derive(keep_fp32={trials.spec.precision: (*trials.base_keep, *final.kept)})


@cli.command()
@suite_option
@click.option(
    "--runtime", "runtime", default="ort-int8", show_default=True, metavar="NAME", help="fp16/int8 runtime whose layers are ranked."
)
@click.option("--noise/--no-noise", default=True, show_default=True, help="Also inject Gaussian noise at each layer's output (PyTorch).")
@click.option("--levels", default="0.05,0.1,0.2", show_default=True, metavar="S,S", help="Noise levels (std relative to the output's).")
@batch_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples of the split.")
@report_dir_option("sensitivity")
@cache_option
def sensitivity(
    suite_name: str | None,
    runtime: str,
    noise: bool,
    levels: str,
    batch_size: int | None,
    limit: int | None,
    report_dir: Path | None,
    cache_dir: Path | None,
) -> None:
    """Per-layer sensitivity: one layer kept in FP32 at a time (ranked), and noise injected at each layer's output."""
    from harness.analysis.sensitivity import TRIAL_HEADERS, Trials, noise_injection, write_sensitivity

    suite = _require_suite(suite_name)
    try:
        noise_levels = tuple(float(v) for v in levels.split(",") if v.strip())
    except ValueError as exc:
        raise HarnessError(f"--levels {levels!r}: expected numbers separated by commas", "e.g. --levels 0.05,0.1,0.2") from exc
    batch = batch_size or suite.run.batch_size
    if noise and suite.model.onnx:
        progress_console.print(f"no noise injection: {suite.model.weights.name} is a ready ONNX file (it needs the PyTorch model)")
        noise = False
    with tracking() as track:
        run = SuiteRun(suite, _cache(cache_dir), limit, track)
        trials = Trials(run, runtime, batch)
        ranked = trials.sensitivity()
        injected = noise_injection(run, noise_levels, batch, trials.reference) if noise else None
    render_table(console, f"{runtime}: one layer kept in FP32 at a time ({ranked.samples} samples)", TRIAL_HEADERS, ranked.rows())
    if injected:
        render_table(console, f"noise at each layer's output ({injected.metric_name})", injected.headers(), injected.rows())
    for path in write_sensitivity(report_folder(report_dir, suite.name, "sensitivity"), suite.name, ranked, [], injected):
        console.print(f"wrote {path}")


@cli.group()
def cache() -> None:
    """The content-addressed artifact cache (exports, variants, IR, engines)."""


@cache.command("ls")
@cache_option
def cache_ls(cache_dir: Path | None) -> None:
    """List cached artifacts."""
    store = _cache(cache_dir)
    table = Table(title=f"artifact cache {store.root}")
    for column in ("kind", "key", "files", "size"):
        table.add_column(column)
    for kind, folder, size in store.entries():
        files = ", ".join(sorted(p.name for p in folder.iterdir() if p.name not in ("key.json", "info.json")))
        table.add_row(kind, folder.name, files, f"{size / 1e6:.2f} MB")
    console.print(table)


@cache.command("clear")
@cache_option
def cache_clear(cache_dir: Path | None) -> None:
    """Delete every cached artifact."""
    store = _cache(cache_dir)
    console.print(f"removed {store.clear()} artifacts from {store.root}")


@cli.command()
@click.option(
    "--images", type=click.Path(path_type=Path), required=True, help="Image folder: one sub-folder per class (eval/, calib/ optional)."
)
@click.option("--builder", metavar="MODULE:FUNCTION", help="Builds your model, e.g. torchvision.models:resnet18.")
@click.option("--weights", type=click.Path(path_type=Path), help="Its weights: safetensors or a state dict.")
@click.option("--onnx", "onnx_file", type=click.Path(path_type=Path), help="Instead of --builder and --weights: a ready ONNX file.")
@click.option("--kwargs", "kwargs_json", default="{}", metavar="JSON", help="Builder arguments, e.g. '{\"num_classes\": 10}'.")
@click.option("--name", help="Suite name (default: the image folder's name).")
@click.option(
    "--input-size", type=click.IntRange(min=8), default=None, help="The model's input side (crop); default: an ONNX file's, else 224."
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("."), show_default=True, help="Folder of the suite file.")
def init(
    images: Path,
    builder: str | None,
    weights: Path | None,
    onnx_file: Path | None,
    kwargs_json: str,
    name: str | None,
    input_size: int | None,
    out: Path,
) -> None:
    """Write a suite file and the image folder's manifest for your own model (then: golden update, run)."""
    from exporters.onnx_file import read_onnx
    from harness.spec.scaffold import NewSuite, write_new_suite

    torch_model = builder is not None and weights is not None
    if torch_model == (onnx_file is not None) or (not torch_model and (builder or weights)):
        raise HarnessError("harness init needs --builder and --weights, or --onnx", "e.g. --onnx model.onnx, or --builder M:F --weights W")
    if onnx_file is not None:
        dims = read_onnx(onnx_file, "--onnx").inputs[0].dims or ()
        fixed = dims[2:] if len(dims) == 4 else ()
        if fixed and None not in fixed and fixed[0] == fixed[1]:
            if input_size not in (None, fixed[0]):
                raise HarnessError(
                    f"--input-size {input_size}: {onnx_file.name} takes {fixed[0]}x{fixed[1]}", f"pass --input-size {fixed[0]}"
                )
            input_size = fixed[0]

    try:
        kwargs = json.loads(kwargs_json)
    except json.JSONDecodeError as exc:
        raise HarnessError(f"--kwargs {kwargs_json!r} is not JSON: {exc}", "e.g. --kwargs '{\"num_classes\": 10}'") from exc
    if not isinstance(kwargs, dict):
        raise HarnessError(f"--kwargs {kwargs_json!r} is not a JSON object", "e.g. --kwargs '{\"num_classes\": 10}'")
    calibration = "calib" if (images / "calib").is_dir() else None
    model_file = onnx_file if onnx_file is not None else weights
    assert model_file is not None
    new = NewSuite(name or images.resolve().name, builder, model_file, images, kwargs, input_size or 224, calibration)
    suite_path, manifest_path = write_new_suite(new, out)
    suite = load_suite(str(suite_path))  # what was written reads back as a valid suite
    console.print(f"wrote {suite_path} and {manifest_path}")
    console.print(f"next: harness golden update --suite {suite.command_name}   then: harness run --suite {suite.command_name}")


@cli.command()
def schema() -> None:
    """Print the JSON Schema of suite files (for editors and CI linting of suite .toml files)."""
    from harness.spec.schema import suite_json_schema

    click.echo(json.dumps(suite_json_schema(suite_names()), indent=1))


@cli.command()
def doctor() -> None:
    """Python, libraries, CPU/GPU, and every runtime: available, or why not and how to fix it."""
    env = environment()
    console.print(f"platform: {env['platform']}")
    console.print(f"cpu: {env['cpu']}")
    console.print(f"isa: {', '.join(env['isa']) or 'none of the tracked features'}")
    console.print(f"threads: {env['threads']} (of {env['cpus']} CPUs; set HARNESS_THREADS to change)")
    console.print(f"gpu: {escape(gpu_summary())}")
    for name, version in env["libraries"].items():
        console.print(f"{name}: {version}")
    console.print(runtime_table(probe=True))


@cli.command()
@suite_option
@click.option("--onnx", "onnx_model", type=click.Path(path_type=Path), help="Run a ready ONNX model instead of a suite.")
@click.option(
    "--inputs",
    "inputs_dir",
    type=click.Path(path_type=Path),
    help="With --onnx: folder in ONNX test-data layout (test_data_set_N/input_K.pb).",
)
@runtime_option
@stack_option
@batch_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples of the split.")
@report_dir_option("run")
@golden_dir_option
@click.option("--no-golden", is_flag=True, help="Compare against the reference runtime only.")
@click.option("--shard", "shard_spec", metavar="I/N", help="Run only block I of N of the samples (merge the reports with `harness merge`).")
@click.option(
    "--repeat", type=click.IntRange(min=1), default=1, show_default=True, help="Run each runtime N times: are outputs bit-identical?"
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run: reuse the work units already done under REPORT_DIR/units.")
@click.option(
    "--chunk", type=click.IntRange(min=1), default=DEFAULT_CHUNK, show_default=True, help="Samples per work unit (rounded up to batches)."
)
@click.option(
    "--executor",
    type=click.Choice(sorted(EXECUTORS)),
    default="local",
    show_default=True,
    help="Where work units run: this process (+ decode processes), or a Ray cluster (`pip install 'sysnoise-harness[ray]'`).",
)
@click.option("--address", metavar="HOST:PORT", help="With --executor ray: the cluster to join (default: start a local one).")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help=f"Local: decode processes, 0 = this one (default from {POOL_FROM} samples: the cores inference leaves, else every core "
    "between inference phases). Ray: worker actors (default: the cluster's CPUs).",
)
@cache_option
@click.option(
    "--calibration",
    "calibration_dir",
    type=click.Path(path_type=Path),
    help="With --onnx: int8 calibration inputs, a folder in the --inputs layout (int8 runtimes run only with it).",
)
@click.option(
    "--rtol",
    type=float,
    default=None,
    help="With --onnx: relative tolerance on every element (default: each runtime by its precision's tolerance profile).",
)
@click.option("--atol", type=float, default=None, help="With --onnx: absolute tolerance on every element (a missing one of the two is 0).")
@click.pass_context
def run(
    ctx: click.Context,
    suite_name: str | None,
    onnx_model: Path | None,
    inputs_dir: Path | None,
    runtimes: tuple[str, ...],
    stack_name: str | None,
    batch_size: int | None,
    limit: int | None,
    report_dir: Path | None,
    golden_dir: Path | None,
    no_golden: bool,
    shard_spec: str | None,
    repeat: int,
    resume: bool,
    chunk: int,
    executor: str,
    address: str | None,
    workers: int | None,
    cache_dir: Path | None,
    calibration_dir: Path | None,
    rtol: float | None,
    atol: float | None,
) -> None:
    """Run runtimes on identical inputs; compare with the reference and the goldens."""
    if onnx_model is not None:
        if suite_name or inputs_dir is None:
            raise HarnessError(
                "--onnx needs --inputs DIR and no --suite", "e.g. harness run --onnx model.onnx --inputs test_data/ --runtime ort-fp32"
            )
        testdata = run_test_data(onnx_model, inputs_dir, runtimes, _cache(cache_dir), Judging(rtol, atol), calibration_dir)
        testdata.render(console)
        folder = report_folder(report_dir, onnx_model.stem, "run")
        assert testdata.measured is not None
        for path in [*write_report_files(folder, testdata.describe(), testdata.to_markdown()), testdata.measured.save(folder)]:
            console.print(f"wrote {path}")
        ctx.exit(0 if testdata.passed else 1)
    if calibration_dir is not None:
        raise HarnessError("--calibration is for --onnx runs", "a suite calibrates int8 on its [data] calibration_split")
    suite = _require_suite(suite_name)
    report_dir = report_folder(report_dir, suite.name, "run")
    execution = Execution(executor, workers, address, report_dir / UNITS_DIR, resume)
    with tracking() as track:
        report = api.check(
            suite,
            _expand_runtimes(runtimes, suite.run.runtimes),
            stack_name,
            limit,
            golden=not no_golden,
            batch_size=batch_size,
            golden_dir=golden_dir,
            cache_dir=cache_dir,
            shard=_parse_shard(shard_spec),
            repeat=repeat,
            chunk=chunk,
            execution=execution,
            track=track,
        )
    for line in execution.log:
        progress_console.print(escape(line))
    assert report.measured is not None
    _finish(ctx, report, report.measured, suite, report_dir)


def _parse_shard(spec: str | None) -> tuple[int, int]:
    if not spec:
        return (1, 1)
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError as exc:
        raise HarnessError(f"--shard {spec!r} is not I/N", "e.g. --shard 2/4 runs the second quarter of the samples") from exc
    return index, count  # the range is checked by work.plan_run


def _finish(ctx: click.Context, report: RunReport, measured: RunOutputs, suite: Suite, report_dir: Path) -> None:
    """Print the verdict, write every report file, exit 0 (pass) or 1 (a check failed)."""
    render_report(console, report)
    for path in publish(report_dir, report, measured, suite.data):
        console.print(f"wrote {path}")
    ctx.exit(0 if report.passed else 1)


@cli.command("localize")
@suite_option
@runtime_option
@click.option(
    "--against",
    default=None,
    metavar="NAME",
    help="Reference runtime [default: ort-fp32 on the FP32 graph; torch-fp32 for torch runtimes].",
)
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True, help="Compare on the first K samples.")
@click.option("--per-round", type=click.IntRange(min=1), default=6, show_default=True, help="Tensors exposed per session.")
@batch_option
@report_dir_option("localize")
@cache_option
def localize_cmd(
    suite_name: str | None,
    runtimes: tuple[str, ...],
    against: str | None,
    samples: int,
    per_round: int,
    batch_size: int | None,
    report_dir: Path | None,
    cache_dir: Path | None,
) -> None:
    """Which layer? The first intermediate tensor beyond the precision's tolerance, and the one adding the most error
    (ONNX-based runtimes: graph tensors; torch runtimes: module outputs)."""
    from harness.analysis import localize

    suite = _require_suite(suite_name)
    if not runtimes:
        raise HarnessError("no runtime to localize", "pass --runtime NAME, e.g. --runtime ort-int8")
    with tracking() as track:
        run = SuiteRun(suite, _cache(cache_dir), limit=samples, track=track)
        results = localize.localize(run, _expand_runtimes(runtimes, ()), against, samples, per_round, batch_size or suite.run.batch_size)
    for result in results:
        render_table(console, escape(result.summary()), localize.HEADERS, result.rows())
        probed = f"{len(result.measured)}/{result.total_probes} tensors probed in {len(result.rounds)} rounds of <= {per_round}"
        console.print(f"recipe: {escape(' -> '.join(result.recipe))}; {probed}")
        for note in result.notes():
            console.print(f"note: {escape(note)}")
    for path in localize.write(results, run, report_folder(report_dir, suite.name, "localize")):
        console.print(f"wrote {path}")


@cli.command()
@click.argument("shard_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@suite_option
@golden_dir_option
@click.option("--no-golden", is_flag=True, help="Compare against the reference runtime only.")
@report_dir_option("merge")
@click.pass_context
def merge(
    ctx: click.Context,
    shard_dirs: tuple[Path, ...],
    suite_name: str | None,
    golden_dir: Path | None,
    no_golden: bool,
    report_dir: Path | None,
) -> None:
    """Merge the report folders of `harness run --shard I/N` jobs into the report of the whole run."""
    suite = _require_suite(suite_name)
    merged = merge_outputs([RunOutputs.load(d) for d in shard_dirs])
    if merged.suite != suite.name:
        raise HarnessError(f"the shards ran suite '{merged.suite}', not '{suite.name}'", f"pass --suite {merged.suite}")
    store = None if no_golden else golden_store(suite, root=golden_dir)
    _finish(ctx, judge_run(suite, merged, store), merged, suite, report_folder(report_dir, suite.name, "merge"))


@cli.command("report")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.pass_context
def report_cmd(ctx: click.Context, old: Path, new: Path) -> None:
    """Compare two runs' report.json: metric, error, flips and verdict per runtime; provenance changes. Exit 1 if a check regressed."""
    rows, provenance, regressed = diff_reports(load_report(old), load_report(new))
    render_table(console, f"{old} -> {new}", DIFF_HEADERS, rows)
    for line in provenance:
        console.print(f"changed: {escape(line)}")
    if regressed:
        console.print("[red]a check went from PASS to FAIL[/red]")
    ctx.exit(1 if regressed else 0)


def _split_axes(value: str | None) -> list[str]:
    axes = [a.strip() for a in value.split(",") if a.strip()] if value else list(DEFAULT_AXES)
    unknown = [a for a in axes if a not in AXES]
    if unknown:
        raise HarnessError(f"unknown matrix axis {', '.join(unknown)}", f"axes: {', '.join(AXES)}")
    return axes


@cli.command()
@suite_option
@click.option("--axes", metavar="A,B", help=f"Comma-separated axes (default: {','.join(DEFAULT_AXES)}).")
@runtime_option
@click.option("--skip", multiple=True, metavar="[AXIS:]VARIANT", help="Leave a variant out (repeatable), e.g. colour:bgr.")
@batch_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples of the split.")
@report_dir_option("matrix")
@click.option(
    "--chunk", type=click.IntRange(min=1), default=DEFAULT_CHUNK, show_default=True, help="Samples in memory at a time (whole batches)."
)
@cache_option
def matrix(
    suite_name: str | None,
    axes: str | None,
    runtimes: tuple[str, ...],
    skip: tuple[str, ...],
    batch_size: int | None,
    limit: int | None,
    report_dir: Path | None,
    chunk: int,
    cache_dir: Path | None,
) -> None:
    """SysNoise table: each axis varied alone against the reference, then the combined worst case."""
    suite = _require_suite(suite_name)
    chosen = _split_axes(axes)
    with tracking() as track:
        run = SuiteRun(suite, _cache(cache_dir), limit, track)
        matrix_runtimes = _expand_runtimes(runtimes, (suite.run.reference,))
        report = run_matrix(suite, chosen, matrix_runtimes, run, batch_size or suite.run.batch_size, set(skip), chunk)
    title = f"{suite.name}: SysNoise per axis ({report.metric_name} delta in points, {report.samples} samples)"
    render_table(console, title, report.SUMMARY_HEADERS, report.summary_rows(), report.SUMMARY_DROP)
    render_table(console, "every variant", report.ROW_HEADERS, report.variant_rows(), report.ROW_DROP)
    if report.not_applicable:
        render_table(console, "not applicable", report.NOT_APPLICABLE_HEADERS, [n.cells() for n in report.not_applicable])
    for note in report.notes:
        console.print(f"note: {escape(note)}")
    console.print(f"{report.decodes} image decodes, {report.seconds:.1f} s (inference {report.inference_seconds:.1f} s)")
    for path in report.write(report_folder(report_dir, suite.name, "matrix")):
        console.print(f"wrote {path}")


@cli.group()
def golden() -> None:
    """Golden outputs: recorded deliberately, never by `run`."""


def _review(
    suite_name: str | None,
    runtimes: tuple[str, ...],
    stack_name: str | None,
    batch_size: int | None,
    golden_dir: Path | None,
    cache_dir: Path | None,
) -> tuple[Suite, GoldenStore, list[GoldenChange]]:
    """Measure the runtimes on the whole split and print what an update of their goldens would change."""
    suite = _require_suite(suite_name)
    names = _expand_runtimes(runtimes, suite.run.runtimes)
    with tracking() as track:
        store, changes = api.review_goldens(
            suite, names, stack=stack_name, batch_size=batch_size, golden_dir=golden_dir, cache_dir=cache_dir, track=track
        )
    for change in changes:
        console.print(f"[bold]{change.runtime}[/bold] ({store.folder(change.runtime)})")
        for line in change.lines():
            console.print(f"  {escape(line)}")
    return suite, store, changes


golden_options = [suite_option, runtime_option, stack_option, batch_option, golden_dir_option, cache_option]


def _with_golden_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(golden_options):
        fn = option(fn)
    return fn


@golden.command("diff")
@_with_golden_options
def golden_diff(
    suite_name: str | None,
    runtimes: tuple[str, ...],
    stack_name: str | None,
    batch_size: int | None,
    golden_dir: Path | None,
    cache_dir: Path | None,
) -> None:
    """Show what `golden update` would change (metric, flips, max abs change, stages, metadata); writes nothing."""
    _review(suite_name, runtimes, stack_name, batch_size, golden_dir, cache_dir)


@golden.command("update")
@_with_golden_options
@click.option("--force", is_flag=True, help="Write even though the model weights or the dataset differ from the goldens'.")
def golden_update(
    suite_name: str | None,
    runtimes: tuple[str, ...],
    stack_name: str | None,
    batch_size: int | None,
    golden_dir: Path | None,
    cache_dir: Path | None,
    force: bool,
) -> None:
    """Show the diff, then record the goldens of the given runtimes (default: the suite's), atomically and under a lock."""
    _suite, store, changes = _review(suite_name, runtimes, stack_name, batch_size, golden_dir, cache_dir)
    api.commit_goldens(store, changes, force)
    console.print(f"wrote {len(changes)} golden(s) under {store.root}")


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def main() -> None:
    """Exit 0 / 1 (a check failed) / 2 (usage or input error, one line) / 130 (interrupted, one line)."""
    try:
        code = cli.main(prog_name="harness", standalone_mode=False)
    except HarnessError as exc:
        if _caused_by_interrupt(exc):  # a library wrapped the Ctrl-C (torch.onnx.export does): not an input error
            exit_interrupted()
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        exit_interrupted()
    sys.exit(code if isinstance(code, int) else 0)
