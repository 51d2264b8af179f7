"""COCO instances files and YOLO labels as datasets: the bundled detection data read as COCO or YOLO gives the
manifest's targets and mAP; bad annotations are one line, exit 2; crowd regions are honoured as pycocotools does."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.core.errors import HarnessError
from harness.data.formats import label_file, load_coco
from harness.spec.suite import BUNDLED_DIR, Suite, load_suite
from harness.tasks import make_task
from harness.tasks.detection import coco_evaluate
from tests.conftest import CliResult
from tests.test_cli_errors import _assert_one_line_error

DETECT_TOML = BUNDLED_DIR / "detect.toml"
DETECT_DATA = BUNDLED_DIR / "detect" / "data"
EVAL_SPLITS = 'split = "eval"\ncalibration_split = "calib"\n'
MANIFEST_DATA = 'manifest = "detect/data/manifest.json"\n' + EVAL_SPLITS
YOLO_SPLITS = 'split = "val"\ncalibration_split = "train"\n'


@pytest.fixture(scope="module")
def detect() -> Suite:
    return load_suite("detect")


def _variant(tmp_path: Path, data: str, name: str = "variant.toml") -> Path:
    """The bundled detection suite with absolute paths and another [data] source (and splits)."""
    text = DETECT_TOML.read_text().replace('weights = "detect/', f'weights = "{BUNDLED_DIR}/detect/')
    text = text.replace('dir = "../../golden/detect"', f'dir = "{tmp_path / "golden"}"')
    assert MANIFEST_DATA in text
    path = tmp_path / name
    path.write_text(text.replace(MANIFEST_DATA, data))
    return path


def _coco_data(eval_file: Path, calib_file: Path = DETECT_DATA / "instances_calib.json") -> str:
    return f'coco = {{ eval = "{eval_file}", calib = "{calib_file}" }}\nimages = "{DETECT_DATA}"\n' + EVAL_SPLITS


def _targets(suite: Suite, split: str = "eval") -> tuple[list[str], np.ndarray]:
    dataset = suite.data.load(split, make_task(suite.task).target)
    return [s.id for s in dataset.samples], np.stack([s.target for s in dataset.samples])


def _same_targets(mine: np.ndarray, manifest: np.ndarray, area_atol: float) -> None:
    """Boxes to float rounding (COCO stores x, y, w, h; YOLO normalised centres), labels and crowd flags exactly."""
    assert np.array_equal(np.isnan(mine), np.isnan(manifest))
    np.testing.assert_allclose(mine[..., :4], manifest[..., :4], atol=1e-9)
    assert np.array_equal(mine[..., 4:6], manifest[..., 4:6], equal_nan=True)
    np.testing.assert_allclose(mine[..., 6], manifest[..., 6], atol=area_atol)


def test_the_bundled_coco_files_give_the_manifest_targets(detect: Suite, tmp_path: Path) -> None:
    coco = load_suite(str(_variant(tmp_path, _coco_data(DETECT_DATA / "instances_eval.json"))))
    assert coco.data.class_names() == detect.data.class_names() == ("circle", "square", "triangle", "ring", "cross", "star")
    assert coco.data.root == DETECT_DATA
    for split in ("eval", "calib"):
        ids, targets = _targets(coco, split)
        manifest_ids, manifest_targets = _targets(detect, split)
        assert ids == manifest_ids  # file_name relative to images: goldens and attribution key on the same ids
        _same_targets(targets, manifest_targets, area_atol=0.005)  # the COCO file's areas are rounded to 2 decimals


def test_a_coco_file_is_one_split(tmp_path: Path) -> None:
    one_file = f'coco = "{DETECT_DATA / "instances_eval.json"}"\nimages = "{DETECT_DATA}"\ncalibration_split = "calib"\n'
    with pytest.raises(HarnessError, match=r"a COCO file is one split: give coco = \{eval = \.\.\., calib = \.\.\.\}"):
        load_suite(str(_variant(tmp_path, one_file)))
    no_calib = f'coco = {{ eval = "{DETECT_DATA / "instances_eval.json"}" }}\nimages = "{DETECT_DATA}"\ncalibration_split = "calib"\n'
    with pytest.raises(HarnessError, match="coco has no split 'calib'"):
        load_suite(str(_variant(tmp_path, no_calib)))


def _map(report_dir: Path) -> float:
    report = json.loads((report_dir / "report.json").read_text())
    (result,) = report["results"]
    return float(result["metric"])


def test_coco_round_trip_gives_the_manifest_map(tmp_path: Path, harness_cli: Callable[..., CliResult]) -> None:
    coco = _variant(tmp_path, _coco_data(DETECT_DATA / "instances_eval.json"))
    maps = {}
    for name, suite in (("manifest", "detect"), ("coco", str(coco))):
        result = harness_cli(
            "run", "--suite", suite, "--runtime", "torch-fp32", "--limit", "40", "--no-golden", "--report-dir", tmp_path / name
        )
        assert result.code == 0, result.out + result.err
        maps[name] = _map(tmp_path / name)
    assert maps["coco"] == pytest.approx(maps["manifest"], abs=1e-12) and maps["manifest"] > 0.1


def _yolo_copy(root: Path, count: int, names: Any) -> None:
    """The first `count` eval images of the bundled data in Ultralytics' layout; the last has no label file."""
    manifest = json.loads((DETECT_DATA / "manifest.json").read_text())
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for k, entry in enumerate(manifest["splits"]["eval"][:count]):
        image = root / "images" / "val" / Path(entry["file"]).name
        shutil.copy(DETECT_DATA / entry["file"], image)
        if k < count - 1:
            w, h = entry["width"], entry["height"]
            lines = [
                f"{label} {(x1 + x2) / 2 / w!r} {(y1 + y2) / 2 / h!r} {(x2 - x1) / w!r} {(y2 - y1) / h!r}"
                for (x1, y1, x2, y2), label in zip(entry["boxes"], entry["labels"], strict=True)
            ]
            label_file(image).write_text("\n".join(lines) + "\n")
    listed = "".join(f"\n  {k}: {n}" for k, n in names.items()) if isinstance(names, dict) else f" {json.dumps(names)}"
    (root / "data.yaml").write_text(f"# a YOLO copy\npath: .\ntrain: images/val\nval: images/val\nnames:{listed}\n")


@pytest.mark.parametrize("names_form", ["list", "mapping"])
def test_a_yolo_copy_gives_the_manifest_targets(detect: Suite, tmp_path: Path, names_form: str) -> None:
    classes = list(detect.data.class_names())
    _yolo_copy(tmp_path / "yolo", 5, classes if names_form == "list" else dict(enumerate(classes)))
    yolo = load_suite(str(_variant(tmp_path, f'yolo = "{tmp_path / "yolo" / "data.yaml"}"\n' + YOLO_SPLITS)))
    assert yolo.data.class_names() == tuple(classes) and yolo.data.root == tmp_path / "yolo"
    ids, targets = _targets(yolo, "val")
    manifest_ids, manifest_targets = _targets(detect)
    assert ids == [f"images/val/{Path(i).name}" for i in manifest_ids[:5]]
    _same_targets(targets[:4], manifest_targets[:4], area_atol=1e-9)
    assert np.isnan(targets[4]).all()  # no label file: an image without objects


def test_a_box_within_a_pixel_of_the_image_is_accepted(detect: Suite, tmp_path: Path) -> None:
    data = json.loads((DETECT_DATA / "instances_eval.json").read_text())
    width = data["images"][0]["width"]
    first = data["annotations"][0]
    first["bbox"][2] = width + 0.9 - first["bbox"][0]  # rounding in real files: kept as annotated
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    dataset = load_coco(path, DETECT_DATA, "eval", make_task(detect.task).target)
    assert dataset.samples[0].target[0, 2] == pytest.approx(width + 0.9)


def _bad_coco(data: dict[str, Any], case: str) -> str:
    """Breaks the bundled eval file one way; returns the fragment its error line must hold."""
    image, annotation = data["images"][0], data["annotations"][0]
    if case == "box-outside":
        annotation["bbox"][0] = image["width"] + 5
        return f"annotation 1 ({image['file_name']}): bbox"
    if case == "unknown-category":
        annotation["category_id"] = 99
        return "annotation 1 (eval/0000.jpg) has category_id 99, not one of the categories (1, 2, 3, 4, 5, 6)"
    if case == "missing-file":
        image["file_name"] = "eval/missing.jpg"
        return f"image id 1: {DETECT_DATA / 'eval' / 'missing.jpg'} not found"
    if case == "duplicate-image-id":
        data["images"][1]["id"] = image["id"]
        return "image id 1 is listed twice (eval/0000.jpg and eval/0001.jpg)"
    assert case == "unknown-image"
    annotation["image_id"] = 10_000
    return "annotation 1 names image id 10000, not listed under 'images'"


@pytest.mark.parametrize("case", ["box-outside", "unknown-category", "missing-file", "duplicate-image-id", "unknown-image"])
def test_bad_coco_annotations_are_one_line(tmp_path: Path, harness_cli: Callable[..., CliResult], case: str) -> None:
    data = json.loads((DETECT_DATA / "instances_eval.json").read_text())
    fragment = _bad_coco(data, case)
    bad = tmp_path / "instances_bad.json"
    bad.write_text(json.dumps(data))
    suite = _variant(tmp_path, _coco_data(bad))
    result = harness_cli("run", "--suite", suite, "--runtime", "torch-fp32", "--no-golden", "--limit", "2")
    _assert_one_line_error(result, f"{bad}: {fragment}")
    if case == "box-outside":
        assert "outside the image" in result.err and "1 px tolerance" in result.err


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("0 0.5 0.5 0.2", "'0 0.5 0.5 0.2' is not `class cx cy w h`"),
        ("6 0.5 0.5 0.2 0.2", "class 6 is not one of the 6 names of data.yaml"),
        ("1 1.2 0.5 0.2 0.2", "x1 = "),
        ("one 0.5 0.5 0.2 0.2", "'one 0.5 0.5 0.2 0.2' is not `class cx cy w h`"),
    ],
    ids=["four-values", "unknown-class", "box-outside", "non-integer-class"],
)
def test_bad_yolo_lines_are_one_line(
    detect: Suite, tmp_path: Path, harness_cli: Callable[..., CliResult], line: str, fragment: str
) -> None:
    _yolo_copy(tmp_path / "yolo", 3, list(detect.data.class_names()))
    labels = tmp_path / "yolo" / "labels" / "val" / "0001.txt"
    labels.write_text(labels.read_text() + line + "\n")
    number = len(labels.read_text().splitlines())
    suite = _variant(tmp_path, f'yolo = "{tmp_path / "yolo" / "data.yaml"}"\n' + YOLO_SPLITS)
    result = harness_cli("run", "--suite", suite, "--runtime", "torch-fp32", "--no-golden", "--limit", "2")
    _assert_one_line_error(result, f"{labels}:{number}: ")
    assert fragment in result.err


def test_an_unknown_yolo_split_names_the_splits(detect: Suite, tmp_path: Path) -> None:
    _yolo_copy(tmp_path / "yolo", 2, list(detect.data.class_names()))
    suite = load_suite(str(_variant(tmp_path, f'yolo = "{tmp_path / "yolo" / "data.yaml"}"\n')))  # split "eval"
    with pytest.raises(HarnessError, match="has no split 'eval' \\(it lists train, val\\)"):
        suite.data.load("eval", make_task(suite.task).target)


# -- crowd regions -------------------------------------------------------------------------------------------------

CROWD_COCO: dict[str, Any] = {  # sparse category ids; a crowd of category 7 with a person-sized box inside it
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "crowd-of-people"}],
    "annotations": [
        {"id": 1, "image_id": 5, "category_id": 7, "bbox": [0.0, 0.0, 100.0, 100.0], "area": 6000.0, "iscrowd": 1},
        {"id": 2, "image_id": 5, "category_id": 7, "bbox": [120.0, 20.0, 40.0, 60.0], "area": 2400.0, "iscrowd": 0},
        {"id": 3, "image_id": 5, "category_id": 3, "bbox": [30.0, 110.0, 50.0, 40.0], "area": 2000.0, "iscrowd": 0},
    ],
}
DETECTIONS = [  # x1 y1 x2 y2 score category id: one inside the crowd region (best score), the two objects found
    (10.0, 10.0, 40.0, 70.0, 0.95, 7),
    (121.0, 21.0, 160.0, 80.0, 0.9, 7),
    (30.0, 111.0, 80.0, 150.0, 0.8, 3),
]


@dataclass
class Side:
    predictions: np.ndarray
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


def _pycocotools(coco: dict[str, Any]) -> np.ndarray:
    """pycocotools' own stats for DETECTIONS on `coco`, the file as written."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = json.loads(json.dumps(coco))
        truth.createIndex()
        found = truth.loadRes(
            [{"image_id": 5, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s} for x1, y1, x2, y2, s, c in DETECTIONS]
        )
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[:6]


def test_a_detection_on_a_crowd_region_is_no_false_positive(detect: Suite, tmp_path: Path) -> None:
    shutil.copy(DETECT_DATA / "eval" / "0005.jpg", tmp_path / "scene.jpg")
    coco = CROWD_COCO | {"images": [{"id": 5, "file_name": "scene.jpg", "width": 224, "height": 172}]}
    (tmp_path / "crowd.json").write_text(json.dumps(coco))
    dataset = load_coco(tmp_path / "crowd.json", tmp_path, "eval", make_task(detect.task).target)
    assert dataset.classes == ("cat", "crowd-of-people")  # category ids 3 and 7 in id order: labels 0 and 1
    targets = np.stack([s.target for s in dataset.samples])
    predictions = np.full((1, 100, 6), np.nan)
    labels = {3: 0, 7: 1}
    predictions[0, : len(DETECTIONS)] = [(*box, s, labels[c]) for *box, s, c in DETECTIONS]
    ours = coco_evaluate(predictions, targets)
    expected = _pycocotools(coco)
    assert [ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == pytest.approx([max(v, 0.0) for v in expected])
    no_crowd = json.loads(json.dumps(coco))
    no_crowd["annotations"][0]["iscrowd"] = 0
    assert _pycocotools(no_crowd)[0] < expected[0]  # as an ordinary object it is missed and the detection in it is false


def test_a_crowd_region_is_no_object_to_lose(detect: Suite) -> None:
    """A confident detection on a crowd region that one side loses is a flip, never a negative flip."""
    task = make_task(detect.task)
    crowd = {"boxes": [[0.0, 0.0, 100.0, 100.0]], "labels": [1], "iscrowd": [1]}
    detection, lost = np.full((1, 100, 6), np.nan), np.full((1, 100, 6), np.nan)
    detection[0, 0] = (5.0, 5.0, 95.0, 95.0, 0.9, 1)
    for flag, negative in ((1, []), (0, ["scene"])):  # as an ordinary object, losing its detection is a negative flip
        targets = task.target(crowd | {"iscrowd": [flag]}, 6)[None]
        agreement = task.agree(["scene"], targets, Side(lost), Side(detection))
        assert agreement.flips == ["scene"] and agreement.negative_flips == negative
