"""Cost of `harness matrix` against the equivalent single runs, measured in one process.

The matrix decodes each image once per decoder setting and infers once per
(tensors, model, runtime).  The equivalent without it is one `harness run`
per variant: decode every image through the variant's stack, infer the
reference runtime and the variant's runtime.  Both use the same warm artifact
cache (exports built beforehand), so the ratio is decode + pre-processing +
inference work only.  It also prints the matrix's wall time against its
inference alone (the seconds its runtimes' sessions ran): what decoding,
post-processing, evaluation and comparison add (target: within 2x).

    python scripts/bench_matrix.py [--suite detect] [--limit 200] [--axes decoder,resize,colour,order,model,precision]
        [--no-single-runs]
"""

from __future__ import annotations

import argparse
import time

from exporters.cache import ArtifactCache, default_cache_dir
from harness.analysis.matrix import MatrixRow, Variant, collect_variants, run_matrix
from harness.run.prepared import SuiteRun
from harness.spec.suite import Suite, load_suite


def single_run(suite: Suite, cache: ArtifactCache, limit: int, variant: Variant, runtime: str, batch_size: int) -> float:
    """`harness run --stack <variant> --runtime <runtime>` in-process: its own decode, the reference runtime, the runtime."""
    start = time.perf_counter()
    run = SuiteRun(suite, cache, limit, stack=variant.stack_for(suite.stack))
    run.infer(suite.run.reference, batch_size)
    run.infer(runtime, batch_size, variant=variant.model)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="demo")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--axes", default="decoder,resize,colour,order,model,precision")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-single-runs", action="store_true", help="only the matrix against its inference alone")
    args = parser.parse_args()
    suite, cache = load_suite(args.suite), ArtifactCache(default_cache_dir())
    axes = args.axes.split(",")

    warm = SuiteRun(suite, cache, args.limit)  # build every artifact first: neither side pays for exports
    run_matrix(suite, axes, [suite.run.reference], warm, args.batch_size)

    start = time.perf_counter()
    report = run_matrix(suite, axes, [suite.run.reference], SuiteRun(suite, cache, args.limit), args.batch_size)
    matrix_seconds = time.perf_counter() - start
    print(f"suite {suite.name}, {len(report.rows)} matrix rows, {args.limit} samples, axes {','.join(axes)}")
    print(
        f"matrix {matrix_seconds:.1f} s, its inference alone {report.inference_seconds:.1f} s -> ratio "
        f"{matrix_seconds / report.inference_seconds:.2f} (target <= 2)"
    )
    if args.no_single_runs:
        return

    variants, _ = collect_variants(suite, axes, set())
    by_name = {(v.axis, v.name): v for v in variants}
    singles: list[tuple[MatrixRow, float]] = []
    for row in report.rows:
        variant = by_name.get((row.axis, row.variant))
        if variant is None:  # the combined rows: their single-run equivalent is one more stand-alone run each
            continue
        singles.append((row, single_run(suite, cache, args.limit, variant, row.comparison.runtime, args.batch_size)))
    single_seconds = sum(s for _, s in singles)
    single_decodes = len(singles) * args.limit
    print(f"suite {suite.name}, {args.limit} samples, axes {','.join(axes)}, {len(singles)} variant rows")
    print(f"decodes: matrix {report.decodes}, single runs {single_decodes} -> ratio {report.decodes / single_decodes:.3f}")
    print(f"wall time: matrix {matrix_seconds:.1f} s, single runs {single_seconds:.1f} s -> ratio {matrix_seconds / single_seconds:.3f}")


if __name__ == "__main__":
    main()
