"""Build the bundled detection dataset: real JPEG scenes, a manifest and COCO annotation files.

Deterministic (fixed seeds).  Writes harness/suites/detect/data/{eval,calib}/*.jpg, manifest.json
(files, sha256 and each image's boxes and labels) and instances_{eval,calib}.json (COCO format, for
other evaluators and viewers).

    python scripts/make_detection_data.py [--eval 300] [--calib 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from detection_scenes import CLASSES, scene

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "harness" / "suites" / "detect" / "data"
SPLIT_SEEDS = {"eval": 20261201, "calib": 20261202}


def build_split(name: str, count: int, seed: int) -> tuple[list[dict[str, object]], dict[str, object]]:
    rng = np.random.default_rng(seed)
    (DATA_DIR / name).mkdir(parents=True)
    entries, images, annotations = [], [], []
    for index in range(count):
        made = scene(rng)
        rel = f"{name}/{index:04d}.jpg"
        (DATA_DIR / rel).write_bytes(made.data)
        entries.append(
            {"file": rel, "sha256": hashlib.sha256(made.data).hexdigest(), "width": made.width, "height": made.height}
            | {"boxes": made.boxes, "labels": made.labels}
        )
        images.append({"id": index + 1, "file_name": rel, "width": made.width, "height": made.height})
        for box, label in zip(made.boxes, made.labels, strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                    "area": round((x2 - x1) * (y2 - y1), 2),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
    return entries, {"images": images, "annotations": annotations, "categories": categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", type=int, default=300)
    parser.add_argument("--calib", type=int, default=100)
    args = parser.parse_args()
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    splits = {}
    for name, count in (("eval", args.eval), ("calib", args.calib)):
        splits[name], coco = build_split(name, count, SPLIT_SEEDS[name])
        (DATA_DIR / f"instances_{name}.json").write_text(json.dumps(coco) + "\n")
    manifest = {"schema_version": 1, "name": "detect", "classes": list(CLASSES), "splits": splits}
    (DATA_DIR / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    boxes = sum(len(e["boxes"]) for e in splits["eval"])
    print(f"wrote {args.eval} eval ({boxes} boxes) + {args.calib} calib scenes under {DATA_DIR}")


if __name__ == "__main__":
    main()
