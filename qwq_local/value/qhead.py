"""The Q-value head: a small GGUF file (linear or MLP on the policy's hidden state) and its scorer."""

# File format (GGUF, general.architecture = "qhead"), all tensors float32:
#   mean, std  [n_embd]           input standardisation: x' = (x - mean) / std
#   linear:    w [n_embd], b [1]                 logit = w . x' + b
#   mlp:       w1 [hidden, n_embd], b1 [hidden], w2 [hidden], b2 [1]
#                                                 logit = w2 . relu(w1 x' + b1) + b2
#   Q = sigmoid(logit)
# Metadata keys are listed in KEYS below; metrics are float64 under `qhead.metrics.<name>`.

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qwq_local import __version__
from qwq_local.errors import (
    ExitCode,
    HeadMismatchError,
    InputFileError,
    ModelFileError,
)
from qwq_local.search.protocol import Candidate

if TYPE_CHECKING:
    from qwq_local.catalog.gguf_info import GGUFInfo

ARCH = "qhead"
FORMAT_VERSION = 1
KINDS = ("linear", "mlp")
ACTIVATION = "relu"
KEYS = {
    "format_version": f"{ARCH}.format_version",
    "kind": f"{ARCH}.kind",
    "activation": f"{ARCH}.activation",
    "architecture": f"{ARCH}.backbone.architecture",
    "n_embd": f"{ARCH}.backbone.embedding_length",
    "model_sha256": f"{ARCH}.backbone.sha256",
    "layer": f"{ARCH}.layer",
    "pooling": f"{ARCH}.pooling",
    "step_delimiter": f"{ARCH}.step_delimiter",
    "training_data": f"{ARCH}.training.data",
    "n_problems": f"{ARCH}.training.n_problems",
    "n_states": f"{ARCH}.training.n_states",
    "problems": f"{ARCH}.training.problems",
    "created": f"{ARCH}.created",
    "version": f"{ARCH}.qwq_local_version",
}
METRICS_PREFIX = f"{ARCH}.metrics."
_CHUNK = 4096  # rows per forward pass, so a large batch never materialises a float64 copy of X


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow for large |z|."""
    out: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return out


def _f32(a: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float32))
    if arr.shape != shape:
        raise ValueError(f"head tensor {name} has shape {arr.shape}, expected {shape}")
    return arr


@dataclass
class QHeadWeights:
    """A head's tensors: standardisation plus either linear (w, b) or MLP (w1, b1, w2, b2) weights."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray | None = None
    b: np.ndarray | None = None
    w1: np.ndarray | None = None
    b1: np.ndarray | None = None
    w2: np.ndarray | None = None
    b2: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = int(np.asarray(self.mean).size)
        self.mean = _f32(self.mean, "mean", (n,))
        self.std = _f32(self.std, "std", (n,))
        if not np.all(self.std > 0):
            raise ValueError("head tensor std must be > 0 everywhere")
        linear = self.w is not None or self.b is not None
        mlp = any(t is not None for t in (self.w1, self.b1, self.w2, self.b2))
        if linear == mlp:
            raise ValueError("a head has either w and b (linear) or w1, b1, w2 and b2 (mlp)")
        if linear:
            self.w = _f32(self.w, "w", (n,))
            self.b = _f32(self.b, "b", (1,))
        else:
            if any(t is None for t in (self.w1, self.b1, self.w2, self.b2)):
                raise ValueError("an mlp head needs all of w1, b1, w2 and b2")
            hidden = int(np.asarray(self.b1).size)
            self.w1 = _f32(self.w1, "w1", (hidden, n))
            self.b1 = _f32(self.b1, "b1", (hidden,))
            self.w2 = _f32(self.w2, "w2", (hidden,))
            self.b2 = _f32(self.b2, "b2", (1,))

    @property
    def kind(self) -> str:
        return "linear" if self.w is not None else "mlp"

    @property
    def n_embd(self) -> int:
        return int(self.mean.size)

    @property
    def hidden(self) -> int:
        """Width of the MLP's hidden layer (0 for a linear head)."""
        return 0 if self.b1 is None else int(self.b1.size)

    def tensors(self) -> dict[str, np.ndarray]:
        """The tensors as written to the file, by name."""
        names = ("w", "b") if self.kind == "linear" else ("w1", "b1", "w2", "b2")
        return {"mean": self.mean, "std": self.std, **{n: getattr(self, n) for n in names}}

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Raw head outputs (before the sigmoid) for a batch of hidden states [n, n_embd]."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_embd:
            raise HeadMismatchError(
                f"hidden states have shape {X.shape}, but the Q-value head expects (n, {self.n_embd})"
            )
        out = np.empty(X.shape[0], dtype=np.float64)
        for start in range(0, X.shape[0], _CHUNK):
            xs = (X[start:start + _CHUNK].astype(np.float32) - self.mean) / self.std
            if self.kind == "linear":
                z = xs @ self.w + self.b[0]  # type: ignore[index]
            else:
                a = np.maximum(xs @ self.w1.T + self.b1, 0.0)  # type: ignore[union-attr]
                z = a @ self.w2 + self.b2[0]  # type: ignore[index]
            out[start:start + _CHUNK] = z
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Q in [0, 1] for a batch of hidden states [n, n_embd]."""
        return sigmoid(self.logits(X))


# A head's pooling: which of a step's states it reads, as the Candidate field and as a bank's feature name.
POOLINGS = {"last_token_of_step": ("hidden", "last"), "mean_of_step": ("hidden_mean", "mean")}


def pooling_for(features: str) -> str:
    """The pooling of a head trained on a bank's `features` (last or mean); ValueError naming the choices."""
    for pooling, (_, name) in POOLINGS.items():
        if name == features:
            return pooling
    raise ValueError(f"must be {' or '.join(name for _, name in POOLINGS.values())}, not {features!r}")


@dataclass
class QHeadMeta:
    """What a head file says about itself: the backbone it reads, how it was trained, how well it did."""

    architecture: str
    n_embd: int
    model_sha256: str = ""  # of the backbone model file the hidden states came from; "" when unknown
    layer: str = "last"
    pooling: str = "last_token_of_step"
    step_delimiter: str = "\n\n"
    training_data: str = ""
    n_problems: int = 0
    n_states: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # held-out auc, ece, brier, accuracy
    # the problems whose states fitted the weights or chose the epoch: `qwq bench choose --head` leaves them out
    problems: tuple[str, ...] = ()
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    version: str = __version__


def write_head(path: Path, head: QHeadWeights, meta: QHeadMeta) -> Path:
    """Write a head file atomically (a temp file beside it, then rename), so a crash never leaves half a head."""
    import gguf

    path = Path(path)
    if meta.n_embd != head.n_embd:
        raise ValueError(f"meta.n_embd is {meta.n_embd} but the head's tensors have n_embd {head.n_embd}")
    strings = {
        "kind": head.kind, "activation": ACTIVATION if head.kind == "mlp" else "none",
        "architecture": meta.architecture, "model_sha256": meta.model_sha256.lower(), "layer": meta.layer,
        "pooling": meta.pooling, "step_delimiter": meta.step_delimiter, "training_data": meta.training_data,
        "created": meta.created, "version": meta.version,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_name("qwq_local Q-value head")
        writer.add_uint32(KEYS["format_version"], FORMAT_VERSION)
        for key, value in strings.items():
            # add_string silently drops empty strings; an empty sha256 must still be written.
            writer.add_key_value(KEYS[key], value, gguf.GGUFValueType.STRING)
        writer.add_uint32(KEYS["n_embd"], meta.n_embd)
        writer.add_uint64(KEYS["n_problems"], meta.n_problems)
        writer.add_uint64(KEYS["n_states"], meta.n_states)
        if meta.problems:
            writer.add_array(KEYS["problems"], [str(p) for p in meta.problems])
        for name, number in meta.metrics.items():
            writer.add_key_value(METRICS_PREFIX + name, float(number), gguf.GGUFValueType.FLOAT64)
        for name, tensor in head.tensors().items():
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_compatible(
    meta: QHeadMeta, *, what: str, architecture: str | None = None, n_embd: int | None = None,
    model_sha256: str | None = None,
) -> None:
    """Raise HeadMismatchError when a head was trained on another backbone than the one given."""
    advice = "train a head for this model with `qwq train-head`"
    if architecture is not None and architecture != meta.architecture:
        raise HeadMismatchError(
            f"Q-value head {what} was trained for architecture {meta.architecture!r}, "
            f"but the model is {architecture!r}; {advice}"
        )
    if n_embd is not None and int(n_embd) != meta.n_embd:
        raise HeadMismatchError(
            f"Q-value head {what} reads hidden states of size {meta.n_embd}, "
            f"but the model's n_embd is {n_embd}; {advice}"
        )
    if model_sha256 and meta.model_sha256 and model_sha256.lower() != meta.model_sha256.lower():
        raise HeadMismatchError(
            f"Q-value head {what} was trained on model file sha256 {meta.model_sha256[:16]}..., "
            f"but this model file is {model_sha256.lower()[:16]}...; {advice}"
        )


@dataclass
class QHead:
    """A loaded Q-value head; as a Scorer it maps a candidate's hidden state to P(the step leads to a right answer)."""

    weights: QHeadWeights
    meta: QHeadMeta
    path: Path | None = None
    name: str = field(default="qhead", init=False)

    @classmethod
    def load(
        cls, path: Path, *, architecture: str | None = None, n_embd: int | None = None,
        model_sha256: str | None = None, model_info: GGUFInfo | None = None,
    ) -> QHead:
        """Read a head file and check it fits the model (architecture, n_embd, sha256 when both are known).

        `model_info` fills `architecture` and `n_embd` from the model's GGUF metadata when they are not given.
        """
        path = Path(path)
        if model_info is not None:
            architecture = architecture if architecture is not None else model_info.architecture
            n_embd = n_embd if n_embd is not None else model_info.n_embd
        weights, meta = read_head(path)
        check_compatible(meta, what=path.name, architecture=architecture, n_embd=n_embd, model_sha256=model_sha256)
        return cls(weights, meta, path)

    @property
    def kind(self) -> str:
        return self.weights.kind

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Q in [0, 1] for a batch of hidden states [n, n_embd]."""
        return self.weights.predict(X)

    @property
    def features(self) -> str:
        """The bank feature it reads (`load_hidden`): last or mean."""
        return POOLINGS[self.meta.pooling][1]

    def score(self, question: str, steps: Sequence[str], candidate: Candidate) -> float:
        state = getattr(candidate, POOLINGS[self.meta.pooling][0])
        if state is None:
            raise RuntimeError(  # a bug: every engine that offers qhead gives hidden states
                "the Q-value head scores hidden states, but this candidate has none: "
                "run the engine with hidden states on (KVTree(hidden=True))"
            )
        hidden = np.asarray(state, dtype=np.float32).reshape(1, -1)
        value = float(self.weights.predict(hidden)[0])
        return 0.0 if math.isnan(value) else value  # a NaN hidden state says nothing good about the step

    def describe(self) -> dict[str, Any]:
        """Everything `qwq head info` shows: file, kind, sizes and the metadata."""
        return {
            "path": str(self.path) if self.path is not None else None,
            "kind": self.kind,
            "hidden": self.weights.hidden,
            "activation": ACTIVATION if self.kind == "mlp" else "none",
            "parameters": int(sum(t.size for n, t in self.weights.tensors().items() if n not in ("mean", "std"))),
            **asdict(self.meta),
        }


def read_head(path: Path) -> tuple[QHeadWeights, QHeadMeta]:
    """Parse a head file; one-line ModelFileError / InputFileError for anything that is not a valid head."""
    _check_is_head(path)
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError, KeyError) as exc:
        raise ModelFileError(f"{path} is not a readable Q-value head ({type(exc).__name__}: {exc})") from None
    fields = {name: f.contents() for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    del reader  # drop the memory map

    def get(key: str, kind: type) -> Any:
        value = fields.get(KEYS[key])
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ModelFileError(f"{path} is not a valid Q-value head: metadata {KEYS[key]} missing or wrong type")
        return value

    version = get("format_version", int)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} is a Q-value head of format {version}; this qwq_local ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade qwq_local"
        )
    kind = get("kind", str)
    if kind not in KINDS:
        raise ModelFileError(f"{path} is not a valid Q-value head: unknown kind {kind!r}")
    if kind == "mlp" and get("activation", str) != ACTIVATION:
        activation = fields.get(KEYS["activation"])
        raise ModelFileError(f"{path} is not a valid Q-value head: unknown activation {activation!r}")
    names = ("mean", "std") + (("w", "b") if kind == "linear" else ("w1", "b1", "w2", "b2"))
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ModelFileError(f"{path} is not a valid Q-value head: tensor(s) {', '.join(missing)} missing")
    non_finite = [n for n in names if not np.all(np.isfinite(tensors[n]))]
    if non_finite:  # NaN or inf would score every step alike (0), silently steering the search
        raise HeadMismatchError(f"{path} is not a usable Q-value head: tensor(s) {', '.join(non_finite)} hold "
                                "NaN or infinite values")
    try:
        weights = QHeadWeights(**{n: tensors[n] for n in names})
    except ValueError as exc:
        raise ModelFileError(f"{path} is not a valid Q-value head: {exc}") from None
    meta = QHeadMeta(
        architecture=get("architecture", str),
        n_embd=get("n_embd", int),
        model_sha256=get("model_sha256", str),
        layer=get("layer", str),
        pooling=get("pooling", str),
        step_delimiter=get("step_delimiter", str),
        training_data=get("training_data", str),
        n_problems=get("n_problems", int),
        n_states=get("n_states", int),
        metrics={k[len(METRICS_PREFIX):]: float(v) for k, v in fields.items() if k.startswith(METRICS_PREFIX)},
        created=get("created", str),
        version=get("version", str),
        problems=_problems(path, fields.get(KEYS["problems"], [])),
    )
    if meta.n_embd != weights.n_embd:
        raise ModelFileError(
            f"{path} is not a valid Q-value head: metadata says n_embd {meta.n_embd}, tensors have {weights.n_embd}"
        )
    if meta.pooling not in POOLINGS:
        raise ModelFileError(f"{path}: a head pooled {meta.pooling!r}; this qwq reads {', '.join(POOLINGS)}")
    return weights, meta


def _problems(path: Path, value: Any) -> tuple[str, ...]:
    """The head's training problems as read (an old head lists none); anything but a list of strings is refused."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ModelFileError(f"{path} is not a valid Q-value head: metadata {KEYS['problems']} is not a list of "
                             "problem ids")
    return tuple(value)


def _check_is_head(path: Path) -> None:
    """Cheap checks before GGUFReader: the file exists, is GGUF, says it is a head, and is not cut short."""
    from qwq_local.catalog.gguf_header import HeaderError, read_header

    if path.is_dir():
        raise InputFileError(f"{path} is a directory, not a Q-value head file", ExitCode.IS_A_DIRECTORY)
    if not path.is_file():
        raise InputFileError(f"Q-value head file not found: {path}", ExitCode.FILE_NOT_FOUND)
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(
            f"{path} is not a GGUF file (bad magic {magic!r}), so not a Q-value head", ExitCode.NOT_GGUF
        )
    try:
        header = read_header(path)
    except HeaderError as exc:
        raise ModelFileError(f"{path} is truncated or corrupt ({exc})") from None
    arch = header.metadata.get("general.architecture")
    if arch != ARCH:
        raise ModelFileError(f"{path} is a GGUF of architecture {arch!r}, not a Q-value head ({ARCH!r})")
    size = path.stat().st_size
    if any(t.offset + t.n_bytes > size for t in header.tensors):
        raise ModelFileError(f"{path} is truncated: tensor data runs past the end of the file")
