"""Build the bundled demo dataset: real JPEG files plus a manifest.

Deterministic (fixed seeds): running it again reproduces the same bytes, so
the manifest's sha256 values stay valid.  Writes
harness/suites/demo/data/{eval,calib}/*.jpg and manifest.json.

    python scripts/make_demo_data.py [--eval 500] [--calib 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from demo_images import CLASSES, encode

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "harness" / "suites" / "demo" / "data"
SPLIT_SEEDS = {"eval": 20261101, "calib": 20261102}


def build_split(name: str, count: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out_dir = DATA_DIR / name
    out_dir.mkdir(parents=True)
    entries = []
    for index in range(count):
        sample = encode(rng, index % len(CLASSES))
        rel = f"{name}/{index:04d}.jpg"
        (DATA_DIR / rel).write_bytes(sample.data)
        entries.append(
            {
                "file": rel,
                "label": sample.label,
                "sha256": hashlib.sha256(sample.data).hexdigest(),
                "width": sample.width,
                "height": sample.height,
                "quality": sample.quality,
                "subsampling": sample.subsampling,
                "progressive": sample.progressive,
                "exif_orientation": sample.exif_orientation,
            }
        )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=500)
    parser.add_argument("--calib", type=int, default=100)
    args = parser.parse_args()
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    splits = {"eval": build_split("eval", args.eval, SPLIT_SEEDS["eval"])}
    splits["calib"] = build_split("calib", args.calib, SPLIT_SEEDS["calib"])
    manifest = {"schema_version": 1, "name": "demo", "classes": list(CLASSES), "splits": splits}
    (DATA_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    size = sum(p.stat().st_size for p in DATA_DIR.rglob("*.jpg"))
    print(f"wrote {args.eval} eval + {args.calib} calib JPEGs ({size / 1e6:.1f} MB) to {DATA_DIR}")


if __name__ == "__main__":
    main()
