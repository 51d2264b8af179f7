"""The faster pre-processing paths give the very bytes of the plain ones: hashes taken while reading, the fused
normalisation, tensors handed back from a worker through a shared file."""

from __future__ import annotations

import gc
import hashlib
import io
import math
import pickle
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from harness.core.hashing import digest, read_hashed, sha256_file
from harness.data.dataset import read_sample_hashed
from harness.data.intake import IntakePolicy
from harness.data.parallel import KEEP_FILES, Pending, SharedRows, TensorFiles, WholeFile, prepare_part, tensor_shape
from harness.data.stack import StackSpec, normalise_into
from harness.spec.suite import Suite


@pytest.mark.parametrize("size", [0, 1000, 3 * 4096 + 17])
def test_hashes_taken_while_reading_equal_separate_hashes(tmp_path: Path, size: int) -> None:
    path = tmp_path / "blob"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    data, sha256, short = read_hashed(path, chunk=4096)
    assert data == path.read_bytes() and sha256 == sha256_file(path) and short == digest(path.read_bytes())
    assert read_hashed(path, sha256=False)[1:] == (None, short)


def test_encoded_hash_of_a_sample_read_equals_the_file_digest(demo_suite: Suite) -> None:
    sample = demo_suite.data.load("eval").samples[0]
    data, short = read_sample_hashed(sample)
    assert sample.sha256 == hashlib.sha256(data).hexdigest() and short == digest(sample.path.read_bytes())


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_fused_normalisation_equals_convert_subtract_scale_transpose(layout: str, dtype: type) -> None:
    spec = StackSpec(layout=layout, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    img = (np.random.default_rng(1).random((19, 23, 3)) * 255).astype(dtype)
    mean = np.asarray(spec.mean, dtype=np.float32) * 255.0
    scale = 1.0 / (np.asarray(spec.std, dtype=np.float32) * 255.0)
    plain = (img.astype(np.float32) - mean) * scale
    plain = np.ascontiguousarray(plain.transpose(2, 0, 1) if layout == "nchw" else plain)
    batch = np.full((2, *plain.shape), np.nan, dtype=np.float32)
    normalise_into(img, spec, batch[1])
    for fused in (normalise_into(img, spec), batch[1]):
        assert fused.dtype == np.float32 and fused.tobytes() == plain.tobytes()
    with pytest.raises(ValueError, match="does not fit"):
        normalise_into(img, spec, batch[0].reshape(-1))


def test_tensors_through_a_shared_file_equal_pickled_ones(demo_suite: Suite, tmp_path: Path) -> None:
    samples = demo_suite.data.load("eval").samples[:6]
    pickled, _ = pickle.loads(pickle.dumps(prepare_part(samples, demo_suite.stack, IntakePolicy())))
    path = tmp_path / "part.npy"
    part, failed = prepare_part(samples, demo_suite.stack, IntakePolicy(), SharedRows(path))
    assert not failed and part is not None and len(part.tensors) == 0  # only the small fields travel back pickled
    shared = pickle.loads(pickle.dumps(part))
    assert np.load(path).tobytes() == pickled.tensors.tobytes() and shared.stages == pickled.stages
    assert shared.geometry == pickled.geometry and shared.ids == pickled.ids


@pytest.mark.parametrize("whole", [False, True], ids=["a-file-a-part", "rows-of-one-file"])
def test_pending_result_gives_the_tensors_of_one_serial_part(demo_suite: Suite, tmp_path: Path, whole: bool) -> None:
    """Parts written to files of their own are copied out once and the files deleted; parts written as rows of the
    list's one file are that file's mapping (no copy), and the file is kept for a later list.  Either way the very
    bytes of one part prepared in this process."""
    samples = demo_suite.data.load("eval").samples[:4]
    shape = tensor_shape(demo_suite.stack)
    assert shape is not None
    files = TensorFiles(tmp_path)
    one = None
    if whole:
        one = WholeFile(files, files.take(len(samples) * math.prod(shape) * 4) or tmp_path, shape)
        paths = [one.path]
        shared = [SharedRows(one.path, 0), SharedRows(one.path, 3)]
    else:
        paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
        shared = [SharedRows(p) for p in paths]
    futures: list[Future] = []
    for part, rows in zip((samples[:3], samples[3:]), shared, strict=True):
        futures.append(Future())
        futures[-1].set_result(prepare_part(part, demo_suite.stack, IntakePolicy(), rows))
    got = Pending(futures, demo_suite.stack, len(samples), [] if whole else paths, one).result()
    plain = prepare_part(samples, demo_suite.stack, IntakePolicy())[0]
    assert plain is not None and type(got.tensors) is np.ndarray and got.tensors.tobytes() == plain.tensors.tobytes()
    assert got.tensors.shape == (len(samples), *shape) and got.stages == plain.stages
    assert all(p.exists() for p in paths) if whole else not any(p.exists() for p in paths)


def test_a_list_s_file_serves_a_later_list_only_once_nothing_maps_it(tmp_path: Path) -> None:
    """A file comes back when the last view of its tensors is gone (not while any view lives), at most
    KEEP_FILES are kept, and a kept file serves a list of its size or smaller."""
    files = TensorFiles(tmp_path)
    first = files.take(4096)
    assert first is not None
    tensors = files.mapped(first, (8, 128))
    view = tensors[2:4]
    del tensors
    gc.collect()
    assert files.take(4096) != first  # a view is alive: the file stays out
    view[:] = 7.0
    del view
    gc.collect()
    assert files.take(8192) != first and files.take(1024) == first  # too small for 8 KB; serves 1 KB
    mapped = [files.mapped(p, (1,)) for p in (files.take(64) for _ in range(KEEP_FILES + 1)) if p is not None]
    assert len(mapped) == KEEP_FILES + 1
    del mapped
    gc.collect()
    assert len(list(tmp_path.iterdir())) == KEEP_FILES + 3  # first, the 4 and 8 KB files made meanwhile, and KEEP_FILES kept
    files.close()


def test_a_failed_list_s_file_is_deleted_not_kept(demo_suite: Suite, tmp_path: Path) -> None:
    """Workers may still be writing to the file of a list that failed: it must never serve another."""
    files = TensorFiles(tmp_path)
    path = files.take(64)
    assert path is not None
    failed: Future = Future()
    failed.set_exception(RuntimeError("a part failed"))
    with pytest.raises(RuntimeError, match="a part failed"):
        Pending([failed], demo_suite.stack, 1, whole=WholeFile(files, path, (16,))).result()
    assert not path.exists() and files.take(64) != path


@pytest.mark.parametrize(
    "keys",
    [
        {"resize_mode": "shorter", "crop": 0},
        {"resize_mode": "letterbox", "crop": 0, "resize_size": 96, "layout": "nhwc"},
        {"resize_mode": "keep-ratio", "crop": 0, "resize_size": 64, "max_size": 96, "size_divisor": 32},
        {"colour": "nv12-int", "resize_mode": "direct"},
    ],
)
def test_tensor_shape_is_that_of_the_stack_s_tensors(demo_suite: Suite, keys: dict[str, object]) -> None:
    """The shape workers' rows are laid out for: every real sample's tensor (a per-image stack's bound), or None."""
    from harness.data.feed import build_inputs
    from harness.data.stack import stack_from

    stack = stack_from("s", keys, "test", base=demo_suite.stack)
    if keys.get("resize_mode") == "shorter":  # each image's own shape (the demo's differ: no batch holds them)
        assert tensor_shape(stack) is None
    else:
        assert tensor_shape(stack) == build_inputs(demo_suite.data.load("eval").samples[:3], stack).tensors.shape[1:]


@pytest.mark.parametrize(
    "keys",
    [
        {},  # shorter side + centre crop
        {"resize": "pillow-bicubic", "resize_mode": "direct", "crop": 0},
        {"resize_mode": "letterbox", "crop": 0, "resize_size": 96},
        {"resize_mode": "keep-ratio", "crop": 0, "resize_size": 64, "max_size": 96, "size_divisor": 32},
        {"resize": "opencv-linear"},  # not a Pillow resize: through numpy
        {"colour": "bgr"},
        {"rounding": "float"},
        {"order": "crop-resize"},
    ],
)
def test_pixels_kept_in_pillow_give_the_bytes_of_pixels_through_numpy(keys: dict[str, object]) -> None:
    """A Pillow-decoded image goes straight to a Pillow resize: the same tensor, geometry and decoded hash as its
    numpy copy (what every other path takes)."""
    from PIL import Image

    from harness.data.feed import pixels_digest
    from harness.data.stack import prepare, stack_from

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (173, 201, 3), dtype=np.uint8))
    image = Image.open(io.BytesIO(_jpeg(image)))
    image.load()
    stack = stack_from("s", keys, "test")
    held, copied = prepare(image, stack), prepare(np.asarray(image), stack)
    assert held.tensor.tobytes() == copied.tensor.tobytes() and held.geometry == copied.geometry
    assert pixels_digest(image) == digest(np.asarray(image))


def _jpeg(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)  # type: ignore[attr-defined]
    return buffer.getvalue()


def test_npz_bytes_are_numpy_s_format_fast_and_the_same_for_the_same_arrays() -> None:
    """A run's result file: read back by numpy.load as written, deflated, and byte-identical whenever it is written."""
    import time
    import zipfile

    from harness.core.files import NPZ_TIME, npz_bytes

    rng = np.random.default_rng(0)
    arrays = {"out/ort-fp32/scores": rng.standard_normal((5, 7)).astype(np.float32), "ids": np.array(["a", "b"]), "meta": np.array("{}")}
    blob = npz_bytes(arrays)
    with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(arrays) and all(np.array_equal(npz[k], v) for k, v in arrays.items())
    members = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    assert {(m.compress_type, m.date_time) for m in members} == {(zipfile.ZIP_DEFLATED, NPZ_TIME)}
    time.sleep(1.1)  # `ZipFile.writestr` with a bare name would stamp the current second into each member
    assert npz_bytes(arrays) == blob


@pytest.mark.parametrize(
    "keys",
    [
        {},  # shorter side + centre crop: one shape
        {"resize_mode": "keep-ratio", "crop": 0, "resize_size": 64, "max_size": 96, "size_divisor": 32},  # per image
        {"resize_mode": "letterbox", "crop": 0, "resize_size": 96, "layout": "nhwc"},
        {"resize_mode": "shorter", "crop": 0},  # each image its own shape: refused, naming every shape
    ],
)
def test_samples_prepared_one_at_a_time_equal_all_decoded_first(demo_suite: Suite, keys: dict[str, object]) -> None:
    """`prepare_samples` drops each decoded image once its tensor is written; the matrix decodes every image first
    (its pixels serve several stacks).  Both give the same bytes, hashes and geometry, or the same refusal."""
    from harness.data.feed import RaggedStack, decode_part, prepare_samples, tensors_from
    from harness.data.stack import stack_from

    stack = stack_from("s", keys, "test", base=demo_suite.stack)
    samples = demo_suite.data.load("eval").samples[:5]
    decoded, _ = decode_part(samples, stack)
    try:
        whole = tensors_from(samples, decoded, stack)
    except RaggedStack as exc:
        with pytest.raises(RaggedStack) as streamed:
            prepare_samples(samples, stack)
        assert str(streamed.value) == str(exc) and "different shapes" in str(exc)
        return
    one_by_one, failed = prepare_samples(samples, stack)
    assert not failed and one_by_one is not None
    assert one_by_one.tensors.shape == whole.tensors.shape and one_by_one.tensors.tobytes() == whole.tensors.tobytes()
    assert one_by_one.stages == whole.stages and one_by_one.geometry == whole.geometry and one_by_one.intake == whole.intake
