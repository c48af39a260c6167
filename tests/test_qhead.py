"""Q-value head files: round trip, refusal of mismatched or foreign files, and the scorer."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from qwq_local.errors import (
    ExitCode,
    HeadMismatchError,
    InputFileError,
    ModelFileError,
)
from qwq_local.search.protocol import Candidate
from qwq_local.value.qhead import (
    QHead,
    QHeadMeta,
    QHeadWeights,
    read_head,
    sigmoid,
    write_head,
)

N_EMBD = 16
SHA = "ab" * 32


def linear_weights(rng: np.random.Generator, n: int = N_EMBD) -> QHeadWeights:
    return QHeadWeights(mean=rng.normal(size=n), std=rng.random(n) + 0.5, w=rng.normal(size=n), b=[0.25])


def mlp_weights(rng: np.random.Generator, n: int = N_EMBD, hidden: int = 8) -> QHeadWeights:
    return QHeadWeights(
        mean=rng.normal(size=n), std=rng.random(n) + 0.5, w1=rng.normal(size=(hidden, n)),
        b1=rng.normal(size=hidden), w2=rng.normal(size=hidden), b2=[-0.5],
    )


def meta(**changes: object) -> QHeadMeta:
    fields: dict[str, object] = {
        "architecture": "qwen2", "n_embd": N_EMBD, "model_sha256": SHA, "step_delimiter": "\n\n",
        "training_data": "gsm8k train[:100], 8 rollouts/state", "n_problems": 100, "n_states": 1234,
        "metrics": {"auc": 0.8125, "ece": 0.03125, "brier": 0.1875, "accuracy": 0.75},
        "created": "2025-01-02T03:04:05+00:00",
    }
    fields.update(changes)
    return QHeadMeta(**fields)  # type: ignore[arg-type]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.mark.parametrize("make", [linear_weights, mlp_weights], ids=["linear", "mlp"])
def test_round_trip_keeps_metadata_and_predictions(tmp_path: Path, rng: np.random.Generator, make) -> None:
    weights = make(rng)
    path = write_head(tmp_path / "h.qhead.gguf", weights, meta())
    head = QHead.load(path, architecture="qwen2", n_embd=N_EMBD, model_sha256=SHA.upper())
    assert head.meta == meta()
    assert head.kind == weights.kind
    for name, tensor in weights.tensors().items():
        np.testing.assert_array_equal(head.weights.tensors()[name], tensor)
    X = rng.normal(size=(50, N_EMBD)).astype(np.float32)
    np.testing.assert_array_equal(head.predict(X), weights.predict(X))
    assert np.all((head.predict(X) > 0) & (head.predict(X) < 1))
    info = head.describe()
    assert info["kind"] == weights.kind and info["architecture"] == "qwen2" and info["metrics"]["auc"] == 0.8125
    assert info["path"] == str(path)
    assert not list(tmp_path.glob("*.tmp")), "the temp file of the atomic write is left behind"


def test_the_training_problems_round_trip_and_a_malformed_list_is_refused(
        tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta(problems=("gsm8k_train_0001", "t2")))
    assert QHead.load(path).meta.problems == ("gsm8k_train_0001", "t2")
    assert QHead.load(write_head(tmp_path / "old.gguf", linear_weights(rng), meta())).meta.problems == ()
    real = gguf.GGUFWriter.add_array
    monkeypatch.setattr(gguf.GGUFWriter, "add_array", lambda self, key, values: real(self, key, [1, 2]))
    bad = write_head(tmp_path / "bad.gguf", linear_weights(rng), meta(problems=("a", "b")))
    with pytest.raises(ModelFileError, match="training.problems is not a list of problem ids"):
        QHead.load(bad)


def test_linear_prediction_is_sigmoid_of_standardised_dot(tmp_path: Path, rng: np.random.Generator) -> None:
    weights = linear_weights(rng)
    x = rng.normal(size=N_EMBD)
    expected = 1 / (1 + np.exp(-(((x - weights.mean) / weights.std) @ weights.w + 0.25)))
    assert weights.predict(x[None, :])[0] == pytest.approx(expected, rel=1e-5)


def test_empty_sha_and_unknown_fields_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta(model_sha256="", metrics={}, training_data=""))
    head = QHead.load(path, model_sha256=SHA)  # unknown sha in the head: not a mismatch
    assert head.meta.model_sha256 == "" and head.meta.metrics == {} and head.meta.training_data == ""


def test_write_replaces_an_existing_head(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "h.gguf"
    write_head(path, linear_weights(rng), meta())
    write_head(path, mlp_weights(rng), meta(n_states=7))
    assert QHead.load(path).kind == "mlp" and QHead.load(path).meta.n_states == 7


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"architecture": "llama"}, "trained for architecture 'qwen2', but the model is 'llama'"),
        ({"n_embd": 5120}, "hidden states of size 16, but the model's n_embd is 5120"),
        ({"model_sha256": "cd" * 32}, "trained on model file sha256 abababab"),
    ],
)
def test_mismatch_is_refused(tmp_path: Path, rng: np.random.Generator, kwargs: dict, message: str) -> None:
    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta())
    with pytest.raises(HeadMismatchError, match=message) as info:
        QHead.load(path, **kwargs)
    assert info.value.exit_code == ExitCode.HEAD_MISMATCH
    assert "\n" not in info.value.message and "qwq train-head" in info.value.message


def test_model_info_supplies_architecture_and_n_embd(tmp_path: Path, rng: np.random.Generator) -> None:
    class Info:
        architecture, n_embd = "qwen2", 896

    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta())
    with pytest.raises(HeadMismatchError, match="n_embd is 896"):
        QHead.load(path, model_info=Info())  # type: ignore[arg-type]


def test_non_head_gguf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="architecture 'llama', not a Q-value head"):
        QHead.load(path)


def test_non_gguf_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "head.gguf"
    path.write_text("not a head at all\n")
    with pytest.raises(ModelFileError, match="not a GGUF file") as info:
        QHead.load(path)
    assert info.value.exit_code == ExitCode.NOT_GGUF


def test_truncated_head_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta())
    data = path.read_bytes()
    path.write_bytes(data[:-64])  # past the alignment padding, into the tensors
    with pytest.raises(ModelFileError, match="truncated"):
        QHead.load(path)
    path.write_bytes(data[:40])
    with pytest.raises(ModelFileError, match="truncated or corrupt"):
        QHead.load(path)


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not found") as info:
        QHead.load(tmp_path / "nope.gguf")
    assert info.value.exit_code == ExitCode.FILE_NOT_FOUND
    with pytest.raises(InputFileError, match="is a directory"):
        QHead.load(tmp_path)


def test_head_missing_a_tensor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.gguf"
    writer = gguf.GGUFWriter(path, "qhead")
    writer.add_uint32("qhead.format_version", 1)
    writer.add_string("qhead.kind", "linear")
    writer.add_tensor("mean", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError, match="tensor\\(s\\) std, w, b missing"):
        read_head(path)


def test_newer_format_is_refused_with_advice(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta())
    raw = bytearray(path.read_bytes())
    key = b"qhead.format_version"
    at = raw.index(key) + len(key) + 4  # key, then the uint32 value type
    raw[at:at + 4] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="format 99.*upgrade qwq_local"):
        QHead.load(path)


def test_inconsistent_weights_are_rejected(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="either w and b"):
        QHeadWeights(mean=np.zeros(4), std=np.ones(4))
    with pytest.raises(ValueError, match="shape"):
        QHeadWeights(mean=np.zeros(4), std=np.ones(4), w=np.zeros(5), b=[0.0])
    with pytest.raises(ValueError, match="std must be > 0"):
        QHeadWeights(mean=np.zeros(4), std=np.zeros(4), w=np.zeros(4), b=[0.0])
    with pytest.raises(ValueError, match="meta.n_embd"):
        write_head(Path("unused.gguf"), linear_weights(rng), meta(n_embd=3))


def test_scorer_uses_the_candidate_hidden_state(rng: np.random.Generator) -> None:
    weights = mlp_weights(rng)
    head = QHead(weights, meta())
    assert head.name == "qhead"
    hidden = rng.normal(size=N_EMBD).astype(np.float32)
    candidate = Candidate("step 2\n\n", branch=1, n_tokens=3, finished=False, hidden=hidden)
    value = head.score("q", ["step 1\n\n"], candidate)
    assert isinstance(value, float) and 0 <= value <= 1
    assert value == pytest.approx(float(weights.predict(hidden[None, :])[0]))


def test_a_mean_pooled_head_scores_the_step_mean_and_an_unknown_pooling_is_refused(
        tmp_path: Path, rng: np.random.Generator) -> None:
    weights = linear_weights(rng)
    last, mean = rng.normal(size=(2, N_EMBD)).astype(np.float32)
    candidate = Candidate("step\n\n", branch=1, n_tokens=3, finished=False, hidden=last, hidden_mean=mean)
    pooled = QHead(weights, meta(pooling="mean_of_step"))
    assert pooled.features == "mean" and QHead(weights, meta()).features == "last"
    assert pooled.score("q", [], candidate) == pytest.approx(float(weights.predict(mean[None, :])[0]))
    assert QHead(weights, meta()).score("q", [], candidate) == pytest.approx(float(weights.predict(last[None, :])[0]))
    with pytest.raises(RuntimeError, match="hidden states on"):
        pooled.score("q", [], Candidate("x", branch=0, n_tokens=1, finished=False, hidden=last))
    path = write_head(tmp_path / "m.gguf", weights, meta(pooling="mean_of_step"))
    assert read_head(path)[1].pooling == "mean_of_step"
    write_head(tmp_path / "x.gguf", weights, meta(pooling="max_of_step"))
    with pytest.raises(ModelFileError, match="a head pooled 'max_of_step'; this qwq reads last_token_of_step, "
                                             "mean_of_step"):
        read_head(tmp_path / "x.gguf")


def test_scorer_without_hidden_state_says_how_to_fix() -> None:
    head = QHead(linear_weights(np.random.default_rng(1)), meta())
    with pytest.raises(RuntimeError, match="hidden states on"):
        head.score("q", [], Candidate("x", branch=0, n_tokens=1, finished=False))


def test_scorer_refuses_hidden_of_the_wrong_size() -> None:
    head = QHead(linear_weights(np.random.default_rng(1)), meta())
    with pytest.raises(HeadMismatchError, match="expects \\(n, 16\\)"):
        head.score("q", [], Candidate("x", branch=0, n_tokens=1, finished=False, hidden=np.zeros(8, np.float32)))


def test_sigmoid_is_stable_at_extremes() -> None:
    out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])
    assert np.all(np.isfinite(out))


def test_head_info_json_writes_an_uncomputable_metric_as_null(
    tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from qwq_local.cli import main

    path = write_head(tmp_path / "h.gguf", linear_weights(rng), meta(metrics={"auc": float("nan"), "ece": 0.125}))
    with pytest.raises(SystemExit) as exited:
        main(["head", "info", str(path), "--json"])
    assert exited.value.code == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    info = json.loads(capsys.readouterr().out, parse_constant=refuse)
    assert info["metrics"] == {"auc": None, "ece": 0.125}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path: Path, rng: np.random.Generator, bad: float,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A head whose weights hold NaN/inf would score every step 0; `head info` and every load refuse it (exit 15)."""
    weights = linear_weights(rng)
    assert weights.w is not None
    weights.w[3] = bad
    path = write_head(tmp_path / "h.gguf", weights, meta())
    with pytest.raises(HeadMismatchError, match="tensor\\(s\\) w hold NaN or infinite") as info:
        QHead.load(path)
    assert info.value.exit_code == ExitCode.HEAD_MISMATCH and str(path) in info.value.message
    from qwq_local.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["head", "info", str(path)])
    assert exc.value.code == ExitCode.HEAD_MISMATCH and "NaN" in capsys.readouterr().err
