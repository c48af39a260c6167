"""read_gguf_info on small GGUFs written with gguf's own writer, and on files that are not (whole) GGUFs."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from qwq_local.catalog import read_gguf_info
from qwq_local.errors import ExitCode, InputFileError, ModelFileError

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def write_qwen2(path: Path, *, key_length: int | None = None, file_type: int | None = 7, yarn: bool = True) -> Path:
    """A 2-layer qwen2-shaped GGUF: n_embd 64, 4 heads, 2 KV heads, a few tiny tensors."""
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_name("Tiny Qwen2")
    writer.add_context_length(32768)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(1_000_000.0)
    if yarn:
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(4.0)
        writer.add_rope_scaling_orig_ctx_len(32768)
    if key_length is not None:
        writer.add_key_length(key_length)
        writer.add_value_length(key_length)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_chat_template(TEMPLATE)
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    for layer in range(2):
        writer.add_tensor(f"blk.{layer}.attn_q.weight", np.ones((64, 64), dtype=np.float32))
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_every_field_of_a_qwen2_gguf(tmp_path):
    path = write_qwen2(tmp_path / "tiny.gguf")

    info = read_gguf_info(path)

    assert (info.architecture, info.name, info.quant) == ("qwen2", "Tiny Qwen2", "Q8_0")
    assert info.parameter_count == 32 * 64 + 2 * (64 * 64 + 64)
    assert info.file_size == path.stat().st_size and info.shard_count == 1
    assert info.context_length == 32768
    assert (info.rope_freq_base, info.rope_scaling_type, info.rope_scaling_factor, info.rope_original_context) == (
        1_000_000.0,
        "yarn",
        4.0,
        32768,
    )
    assert info.chat_template == TEMPLATE
    assert (info.n_layer, info.n_head, info.n_head_kv, info.n_embd, info.head_dim) == (2, 4, 2, 64, 16)
    assert info.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2
    assert info.kv_bytes_per_token(type_bytes=1) == 2 * 2 * 2 * 16


def test_key_length_sets_head_dim_and_missing_rope_scaling_is_none(tmp_path):
    info = read_gguf_info(write_qwen2(tmp_path / "k.gguf", key_length=32, yarn=False))
    assert info.head_dim == 32 and info.kv_bytes_per_token() == 2 * 2 * 2 * 32 * 2
    assert (info.rope_scaling_type, info.rope_scaling_factor, info.rope_original_context) == (None, None, None)


def test_quant_falls_back_to_the_dominant_tensor_type(tmp_path):
    assert read_gguf_info(write_qwen2(tmp_path / "f.gguf", file_type=None)).quant == "F32"


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("hello, I am a text file\n")
    with pytest.raises(ModelFileError, match="not a GGUF") as caught:
        read_gguf_info(path)
    assert caught.value.exit_code == ExitCode.NOT_GGUF and "\n" not in caught.value.message


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.05])
def test_truncated_file_is_corrupt(tmp_path, keep):
    path = write_qwen2(tmp_path / "cut.gguf")
    data = path.read_bytes()
    path.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(ModelFileError) as caught:
        read_gguf_info(path)
    assert caught.value.exit_code == ExitCode.CORRUPT_MODEL and "\n" not in caught.value.message


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(InputFileError) as directory:
        read_gguf_info(tmp_path)
    assert directory.value.exit_code == ExitCode.IS_A_DIRECTORY
    with pytest.raises(InputFileError) as missing:
        read_gguf_info(tmp_path / "absent.gguf")
    assert missing.value.exit_code == ExitCode.FILE_NOT_FOUND


def test_split_gguf_reads_the_first_shard_and_sums_all_shards(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "qwen2", split_max_tensors=1)
    writer.add_block_count(1)
    writer.add_embedding_length(8)
    writer.add_head_count(2)
    writer.add_context_length(512)
    for i in range(3):
        writer.add_tensor(f"blk.0.t{i}", np.ones((2, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    shards = sorted(tmp_path.glob("m-*.gguf"))

    info = read_gguf_info(shards[0])

    assert info.shard_count == 3 and info.file_size == sum(s.stat().st_size for s in shards)
    assert info.parameter_count == 3 * 16 and info.context_length == 512
    shards[2].unlink()
    with pytest.raises(InputFileError, match="missing shard"):
        read_gguf_info(shards[0])


@pytest.mark.model
def test_real_tiny_models_metadata(qwen_path, smollm_path):
    qwen = read_gguf_info(qwen_path)
    assert (qwen.architecture, qwen.quant, qwen.context_length) == ("qwen2", "Q4_K_M", 32768)
    assert qwen.chat_template and "<|im_start|>" in qwen.chat_template
    assert qwen.kv_bytes_per_token() == 2 * qwen.n_layer * qwen.n_head_kv * qwen.head_dim * 2
    smol = read_gguf_info(smollm_path)
    assert (smol.architecture, smol.quant) == ("llama", "Q4_1")


def test_fast_header_reader_agrees_with_gguf_reader(tmp_path):
    from qwq_local.catalog.gguf_header import SkippedArray, read_header

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_token_list([f"tok{i}" for i in range(1000)])
    writer.add_token_scores([float(i) for i in range(1000)])
    writer.add_array("test.small", [1, 2, 3])
    writer.add_chat_template(TEMPLATE)
    writer.add_tensor("a", np.ones((3, 5), dtype=np.float16))
    writer.add_tensor("b", np.ones(7, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    header, reference = read_header(path), gguf.GGUFReader(path)

    assert header.metadata["tokenizer.ggml.tokens"] == SkippedArray(int(gguf.GGUFValueType.STRING), 1000)
    assert header.metadata["tokenizer.ggml.scores"] == SkippedArray(int(gguf.GGUFValueType.FLOAT32), 1000)
    assert header.metadata["test.small"] == [1, 2, 3]
    assert header.metadata["tokenizer.chat_template"] == TEMPLATE
    assert header.data_offset == reference.data_offset
    assert [(t.name, t.ggml_type, t.offset, t.n_elements, t.n_bytes) for t in header.tensors] == [
        (t.name, t.tensor_type, t.data_offset, t.n_elements, t.n_bytes) for t in reference.tensors
    ]


# Hostile or broken model files (issue 25): every count and size is range-checked, exit 7 naming the file.

def _write_model(path: Path, numbers: dict[str, tuple[str, object]], *, nested: int = 0) -> Path:
    """A 2-layer qwen2 GGUF whose numeric keys are given as (writer method, value), e.g. ("add_int32", -1)."""
    defaults: dict[str, tuple[str, object]] = {
        "qwen2.block_count": ("add_uint32", 2), "qwen2.embedding_length": ("add_uint32", 64),
        "qwen2.attention.head_count": ("add_uint32", 4), "qwen2.attention.head_count_kv": ("add_uint32", 2),
        "qwen2.context_length": ("add_uint32", 4096),
    }
    writer = gguf.GGUFWriter(path, "qwen2")
    for key, (method, value) in {**defaults, **numbers}.items():
        getattr(writer, method)(key, value)
    if nested:
        writer.add_array("test.nested", [[1]])
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    for layer in range(2):
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if nested:  # rewrite the [[1]] array as `nested` arrays inside each other
        data = path.read_bytes()
        one = (
            int(gguf.GGUFValueType.ARRAY).to_bytes(4, "little") + (1).to_bytes(8, "little")
        )
        old = one + int(gguf.GGUFValueType.INT32).to_bytes(4, "little") + (1).to_bytes(8, "little") + (
            1).to_bytes(4, "little")
        assert data.count(old) == 1
        new = one * nested + int(gguf.GGUFValueType.INT32).to_bytes(4, "little") + (1).to_bytes(8, "little") + (
            1).to_bytes(4, "little")
        path.write_bytes(data.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("numbers", "named"),
    [
        ({"qwen2.block_count": ("add_int32", -1)}, "qwen2.block_count = -1"),
        ({"qwen2.block_count": ("add_uint64", 1 << 40)}, "qwen2.block_count"),
        ({"qwen2.embedding_length": ("add_uint64", 1 << 38)}, "qwen2.embedding_length"),
        ({"qwen2.block_count": ("add_uint32", 4000), "qwen2.embedding_length": ("add_uint32", 1 << 20)}, "layers"),
        ({"qwen2.attention.head_count_kv": ("add_uint32", 1 << 19)}, "cannot fit"),
        ({"qwen2.context_length": ("add_int64", -5)}, "qwen2.context_length"),
        ({"qwen2.block_count": ("add_float32", float("nan"))}, "not a whole number"),
        ({"qwen2.rope.freq_base": ("add_float32", float("inf"))}, "qwen2.rope.freq_base"),
        ({"split.count": ("add_int32", -3)}, "split.count"),
    ],
)
def test_hostile_numbers_are_a_corrupt_model_naming_the_file(tmp_path, numbers, named):
    path = _write_model(tmp_path / "hostile.gguf", numbers)
    with pytest.raises(ModelFileError) as error:
        read_gguf_info(path)
    assert error.value.exit_code == ExitCode.CORRUPT_MODEL
    assert str(path) in error.value.message and named in error.value.message


def test_deeply_nested_arrays_are_refused_without_recursion(tmp_path):
    path = _write_model(tmp_path / "nested.gguf", {}, nested=200_000)
    with pytest.raises(ModelFileError) as error:
        read_gguf_info(path)
    assert error.value.exit_code == ExitCode.CORRUPT_MODEL and "nested" in error.value.message
    from qwq_local.catalog.gguf_header import read_header

    assert read_header(_write_model(tmp_path / "shallow.gguf", {}, nested=3)).metadata["test.nested"] == [[[[1]]]]


def test_counts_the_file_cannot_hold_are_refused_before_any_loop(tmp_path):
    path = _write_model(tmp_path / "ok.gguf", {})
    data = bytearray(path.read_bytes())
    data[16:24] = (1 << 62).to_bytes(8, "little")  # n_kv
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="cannot fit"):
        read_gguf_info(path)


def test_info_cli_exits_7_on_a_negative_block_count(tmp_path, capsys):
    from qwq_local.cli import main

    path = _write_model(tmp_path / "neg.gguf", {"qwen2.block_count": ("add_int32", -1)})
    with pytest.raises(SystemExit) as exc:
        main(["info", str(path)])
    assert exc.value.code == 7
    assert "neg.gguf" in capsys.readouterr().err
