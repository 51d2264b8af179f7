"""Real dataset formats read into the manifest's `Dataset`: COCO instances files and YOLO (Ultralytics) labels.

Both become entries {file, boxes [[x1, y1, x2, y2]] in source pixels, labels 0..C-1, iscrowd, areas} parsed by
the task's `target`, ids the image paths relative to the images folder (COCO) or the dataset's `path` (YOLO),
so goldens and attribution key on file paths as for a manifest.  The identity is the annotations' sha256 (the
COCO file; for YOLO data.yaml and every label file of the split); images are not hashed (each run's stage
hashes see a changed image).

COCO: sparse category ids map to contiguous labels in id order (COCO's 80 ids 1..90 become 0..79), the class
names are the categories' names in that order; `iscrowd` and `area` reach the evaluator as COCO defines them.
YOLO: a data.yaml (`path`, one image folder per split key, `names`); `images/<split>/x.jpg` has its labels in
`labels/<split>/x.txt` (the last `images` folder of the path replaced by `labels`), one `class cx cy w h` line
per object, normalised to [0, 1] by the upright (EXIF-rotated) image size; no label file: no objects.

Boxes may leave the image by `BOUNDS_TOLERANCE` pixels: real annotations carry sub-pixel rounding (COCO's
boxes are float [x, y, w, h] traced from polygons, YOLO's are normalised decimals); a box further out is
in another coordinate system or for another image, and refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from harness.core.errors import HarnessError
from harness.data.dataset import IMAGE_SUFFIXES, Dataset, TargetParser, dataset_of

BOUNDS_TOLERANCE = 1.0  # pixels
SETTINGS = ("path", "names", "download")  # data.yaml keys other than splits that may hold strings
EXIF_ORIENTATION = 0x0112
TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _read(path: Path, key: str) -> bytes:
    if not path.is_file():
        raise HarnessError(f"annotation file not found: {path}", f"fix [data] {key} in the suite")
    return path.read_bytes()


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _outside(box: tuple[float, float, float, float], width: float, height: float) -> str | None:
    """Which edge of x1 y1 x2 y2 leaves a width x height image by more than the tolerance, in words."""
    x1, y1, x2, y2 = box
    for edge, value, low, high in (("x1", x1, 0, width), ("y1", y1, 0, height), ("x2", x2, 0, width), ("y2", y2, 0, height)):
        if not low - BOUNDS_TOLERANCE <= value <= high + BOUNDS_TOLERANCE:
            return f"{edge} = {value:g} is outside the image (0..{high:g}, {BOUNDS_TOLERANCE:g} px tolerance)"
    return None


# -- COCO ------------------------------------------------------------------------------------------------------


def _coco_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(_read(path, "coco"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HarnessError(f"{path}: not valid JSON: {exc}", "give a COCO instances file") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations", "categories")):
        raise HarnessError(f"{path}: not a COCO instances file", "it needs lists 'images', 'annotations' and 'categories'")
    return data


def _categories(path: Path, data: dict[str, Any]) -> dict[int, str]:
    """Category id -> name, in id order."""
    names: dict[int, str] = {}
    for category in data["categories"]:
        cid = category.get("id") if isinstance(category, dict) else None
        if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(category.get("name"), str):
            raise HarnessError(f"{path}: bad category {category!r}"[:300], "each category needs an integer 'id' and a string 'name'")
        if cid in names:
            raise HarnessError(f"{path}: category id {cid} is listed twice", "give each category its own id")
        names[cid] = category["name"]
    if not names:
        raise HarnessError(f"{path}: no categories", "list the classes under 'categories'")
    return dict(sorted(names.items()))


def coco_class_names(path: Path) -> tuple[str, ...]:
    """The category names of a COCO file in label order; () when it cannot be read."""
    try:
        return tuple(_categories(path, _coco_json(path)).values())
    except HarnessError:
        return ()


@dataclass(frozen=True)
class _CocoImage:
    file: str
    width: float
    height: float
    boxes: list[list[float]]
    labels: list[int]
    iscrowd: list[int]
    areas: list[float]


def _coco_images(path: Path, data: dict[str, Any]) -> dict[int, _CocoImage]:
    images: dict[int, _CocoImage] = {}
    for image in data["images"]:
        image_id = image.get("id") if isinstance(image, dict) else None
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise HarnessError(f"{path}: image without an integer id: {image!r}"[:300], "each image needs id, file_name, width, height")
        file, width, height = image.get("file_name"), image.get("width"), image.get("height")
        if not isinstance(file, str) or not _number(width) or not _number(height) or width <= 0 or height <= 0:
            raise HarnessError(
                f"{path}: image id {image_id} needs a string 'file_name' and positive 'width' and 'height'", "fix its entry under 'images'"
            )
        if image_id in images:
            raise HarnessError(
                f"{path}: image id {image_id} is listed twice ({images[image_id].file} and {file})", "give each image its own id"
            )
        images[image_id] = _CocoImage(file, float(width), float(height), [], [], [], [])
    return images


def _add_annotation(path: Path, position: int, annotation: Any, images: dict[int, _CocoImage], labels: dict[int, int]) -> None:
    """One annotation (the `position`-th of the file), checked, onto its image's lists."""
    if not isinstance(annotation, dict):
        raise HarnessError(f"{path}: annotation {annotation!r} is not an object"[:300], "fix the file's 'annotations'")
    where = f"{path}: annotation {annotation.get('id', f'#{position}')!r}"
    image_id = annotation.get("image_id")
    image = images.get(image_id) if isinstance(image_id, int) else None
    if image is None:
        raise HarnessError(f"{where} names image id {annotation.get('image_id')!r}, not listed under 'images'", "fix its image_id")
    where += f" ({image.file})"
    category = annotation.get("category_id")
    if not isinstance(category, int) or category not in labels:
        raise HarnessError(
            f"{where} has category_id {category!r}, not one of the categories ({', '.join(map(str, labels))})",
            "fix its category_id or add the category",
        )
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(_number, bbox)) or bbox[2] < 0 or bbox[3] < 0:
        raise HarnessError(f"{where}: bbox {bbox!r} is not [x, y, width, height] with width, height >= 0", "fix its bbox")
    x, y, w, h = (float(v) for v in bbox)
    box = (x, y, x + w, y + h)
    outside = _outside(box, image.width, image.height)
    if outside:
        raise HarnessError(
            f"{where}: bbox {bbox} of a {image.width:g} x {image.height:g} image: {outside}",
            "fix the box (COCO boxes are [x, y, width, height] in pixels) or the image's width/height",
        )
    crowd, area = annotation.get("iscrowd", 0), annotation.get("area", w * h)
    if crowd not in (0, 1) or isinstance(crowd, float) or not _number(area) or area < 0:
        raise HarnessError(f"{where}: iscrowd {crowd!r} / area {area!r}", "iscrowd is 0 or 1, area a number >= 0")
    image.boxes.append(list(box))
    image.labels.append(labels[category])
    image.iscrowd.append(int(crowd))
    image.areas.append(float(area))


def load_coco(path: Path, images_root: Path, split: str, target: TargetParser) -> Dataset:
    """One split from a COCO instances file, its images' `file_name`s relative to `images_root`; every bad
    annotation (box outside its image, unknown category or image, duplicate image id, missing file) is one line."""
    raw = _read(path, "coco")
    data = _coco_json(path)
    categories = _categories(path, data)
    labels = {cid: label for label, cid in enumerate(categories)}
    images = _coco_images(path, data)
    for position, annotation in enumerate(data["annotations"]):
        _add_annotation(path, position, annotation, images, labels)
    if not images_root.is_dir():
        raise HarnessError(f"images folder not found: {images_root}", "fix [data] images in the suite")
    for image_id, image in images.items():
        if not (images_root / image.file).is_file():
            raise HarnessError(
                f"{path}: image id {image_id}: {images_root / image.file} not found",
                "restore the file, remove the image from the file, or fix [data] images",
            )
    entries = [{"file": i.file, "boxes": i.boxes, "labels": i.labels, "iscrowd": i.iscrowd, "areas": i.areas} for i in images.values()]
    return dataset_of(path, raw, tuple(categories.values()), split, entries, target, images_root.resolve())


# -- YOLO ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class YoloConfig:
    """An Ultralytics data.yaml: the dataset folder (`path`, relative to the file), the image folders of each
    split key, the class names."""

    file: Path
    raw: bytes
    root: Path
    splits: dict[str, tuple[Path, ...]]
    names: tuple[str, ...]


def _yaml(path: Path) -> tuple[bytes, Any]:
    import yaml  # PyYAML: loaded by YOLO suites only

    raw = _read(path, "yolo")
    try:
        return raw, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise HarnessError(f"{path}: not valid YAML: {' '.join(str(exc).split())}", "fix the data.yaml syntax") from exc


def _names(path: Path, names: Any) -> tuple[str, ...]:
    """`names` as a list, or as {0: name, 1: name, ...} (keys as integers or digits, as Ultralytics reads them)."""
    if isinstance(names, dict):
        indexed = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in names.items()}
        names = [indexed.get(k) for k in range(len(indexed))]  # a gap in 0..C-1 leaves a None: refused below
    if not isinstance(names, list) or not names or not all(isinstance(n, str | int) and not isinstance(n, bool) for n in names):
        raise HarnessError(f"{path}: 'names' is {names!r}"[:300], "give the class names as a list, or as {0: name, 1: name, ...}")
    return tuple(str(n) for n in names)


def read_yolo(path: Path) -> YoloConfig:
    raw, data = _yaml(path)
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: not a YOLO dataset file", "a data.yaml maps path, train, val and names")
    base = data.get("path") or "."
    if not isinstance(base, str):
        raise HarnessError(f"{path}: path = {base!r} is not a folder name", "give the dataset folder, relative to the data.yaml")
    root = (path.parent / base).resolve()
    splits = {}
    for key, value in data.items():  # train, val, test: a folder or a list of folders
        folders = [value] if isinstance(value, str) else value
        if key not in SETTINGS and isinstance(folders, list) and folders and all(isinstance(f, str) for f in folders):
            splits[str(key)] = tuple(_folder(root, f) for f in folders)
    names = _names(path, data.get("names"))
    if "nc" in data and data["nc"] != len(names):
        raise HarnessError(f"{path}: nc = {data['nc']!r} but 'names' lists {len(names)} classes", "make them agree")
    return YoloConfig(path, raw, root, splits, names)


def _folder(root: Path, folder: str) -> Path:
    """A split's folder under `root`; `../x` that is not there is read as `x`, as Ultralytics does (Roboflow's exports)."""
    path = (root / folder).resolve()
    return (root / folder[3:]).resolve() if not path.exists() and folder.startswith("../") else path


def yolo_class_names(path: Path) -> tuple[str, ...]:
    """The class names of a data.yaml; () when it cannot be read."""
    try:
        return read_yolo(path).names
    except HarnessError:
        return ()


def label_file(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        at = len(parts) - 2 - parts[-2::-1].index("images")
        parts[at] = "labels"
    return Path(*parts).with_suffix(".txt")


def upright_size(image: Path) -> tuple[int, int]:
    """Width and height of the image as shown (EXIF orientations 5-8 swap them), from its header."""
    try:
        with Image.open(image) as opened:
            width, height = opened.size
            rotated = opened.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED
    except (OSError, UnidentifiedImageError) as exc:
        raise HarnessError(f"cannot read the image header of {image}: {exc}", "restore the file or remove it") from exc
    return (height, width) if rotated else (width, height)


def _yolo_line(where: str, line: str, names: tuple[str, ...], size: tuple[int, int]) -> tuple[int, list[float]]:
    fields = line.split()
    try:
        label, (cx, cy, w, h) = int(fields[0]), (float(v) for v in fields[1:])
    except (ValueError, IndexError) as exc:  # also a wrong count of values
        raise HarnessError(f"{where}: '{line}' is not `class cx cy w h`", "one object per line: a class index and 4 numbers") from exc
    if not 0 <= label < len(names):
        raise HarnessError(f"{where}: class {label} is not one of the {len(names)} names of data.yaml", "fix the class or 'names'")
    if not all(map(math.isfinite, (cx, cy, w, h))) or w < 0 or h < 0:
        raise HarnessError(f"{where}: '{line}': width and height must be numbers >= 0", "fix the line")
    width, height = size
    box = ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height)
    outside = _outside(box, width, height)
    if outside:
        raise HarnessError(
            f"{where}: '{line}' on a {width} x {height} image: {outside}",
            "YOLO boxes are centre x, y, width, height normalised to [0, 1] by the image size",
        )
    return label, list(box)


def _yolo_entry(config: YoloConfig, image: Path, labels: Path) -> dict[str, Any]:
    boxes, classes = [], []
    if labels.is_file():
        size = upright_size(image)
        for number, line in enumerate(labels.read_text(errors="replace").splitlines(), 1):
            if line.strip():
                label, box = _yolo_line(f"{labels}:{number}", line.strip(), config.names, size)
                classes.append(label)
                boxes.append(box)
    return {"file": image.relative_to(config.root).as_posix(), "boxes": boxes, "labels": classes}


def _split_images(config: YoloConfig, split: str) -> list[Path]:
    if split not in config.splits:
        raise HarnessError(
            f"{config.file} has no split '{split}' (it lists {', '.join(config.splits) or 'none'})",
            'set [data] split (and calibration_split) to keys of the data.yaml, e.g. split = "val"',
        )
    images = []
    for folder in config.splits[split]:
        if not folder.is_dir():
            raise HarnessError(f"{config.file}: {split} folder {folder} not found", "give a folder of images per split (not a list file)")
        if not folder.is_relative_to(config.root):
            raise HarnessError(f"{config.file}: {split} folder {folder} is outside path {config.root}", "keep the images under `path`")
        images += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise HarnessError(f"{config.file}: no images ({', '.join(IMAGE_SUFFIXES)}) in split '{split}'", "fix the split's folder")
    return images


def load_yolo(path: Path, split: str, target: TargetParser) -> Dataset:
    """One split of a YOLO dataset (`read_yolo`); every malformed label line is one line naming the file and line."""
    config = read_yolo(path)
    entries, hashed = [], []
    for image in _split_images(config, split):
        labels = label_file(image)
        entries.append(_yolo_entry(config, image, labels))
        hashed.append([entries[-1]["file"], hashlib.sha256(labels.read_bytes()).hexdigest() if labels.is_file() else None])
    identity = json.dumps({"data.yaml": hashlib.sha256(config.raw).hexdigest(), "labels": hashed}).encode()
    return dataset_of(path, identity, config.names, split, entries, target, config.root)
