"""Build the bundled segmentation dataset: real JPEG scenes, their masks as grey PNGs and a manifest.

Deterministic (fixed seeds).  Writes harness/suites/segment/data/{eval,calib}/NNNN.jpg and NNNN.png (one class
index per pixel: 0 background, 1..6 the shapes of `detection_scenes.CLASSES`) and manifest.json (files, masks,
their sha256, the class list).  Scenes are 96-128 x 80-120 px, the shapes' sizes as in the detection scenes.

    python scripts/make_segmentation_data.py [--eval 200] [--calib 60]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
from detection_scenes import CLASSES, scene
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "harness" / "suites" / "segment" / "data"
SPLIT_SEEDS = {"eval": 20261211, "calib": 20261212}
SIZES = {"widths": (96, 129), "heights": (80, 121)}
SEGMENT_CLASSES = ("background", *CLASSES)


def png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def build_split(name: str, count: int, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    (DATA_DIR / name).mkdir(parents=True)
    entries = []
    for index in range(count):
        made = scene(rng, **SIZES)
        rel, mask_rel = f"{name}/{index:04d}.jpg", f"{name}/{index:04d}.png"
        encoded = png(made.mask)
        (DATA_DIR / rel).write_bytes(made.data)
        (DATA_DIR / mask_rel).write_bytes(encoded)
        entries.append(
            {
                "file": rel,
                "sha256": hashlib.sha256(made.data).hexdigest(),
                "mask": mask_rel,
                "mask_sha256": hashlib.sha256(encoded).hexdigest(),
            }
        )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--calib", type=int, default=60)
    args = parser.parse_args()
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    splits = {name: build_split(name, count, SPLIT_SEEDS[name]) for name, count in (("eval", args.eval), ("calib", args.calib))}
    manifest = {"schema_version": 1, "name": "segment", "classes": list(SEGMENT_CLASSES), "splits": splits}
    (DATA_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {args.eval} eval + {args.calib} calib scenes with masks under {DATA_DIR}")


if __name__ == "__main__":
    main()
