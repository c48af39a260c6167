"""A GGUF's chat template is untrusted code: sandboxed, bounded in steps and size, a failure is a bad model file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from qwq_local.engine.template import MAX_OUTPUT, ChatTemplate, TemplateError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
LOOP = "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}"


def test_a_real_template_renders_as_before() -> None:
    rendered = ChatTemplate(CHATML, bos_token="<s>", eos_token="</s>").render(MESSAGES)
    assert rendered == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    tojson = ChatTemplate("{{ bos_token }}{{ messages[1] | tojson }}{% generation %}g{% endgeneration %}", "<s>", "")
    assert tojson.render(MESSAGES) == '<s>{"role": "user", "content": "2+2?"}g'


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (LOOP, "bound"),
        ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "bound"),
        ("{% set s = 'x' * 99999 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}", "bound"),
        ("{{ 'x' * 1000000000 }}", "items"),
        ("{{ 'x'.center(1000000000) }}", "size"),
        ("{{ 'x' | center(1000000000) }}", "size"),
        ("{{ '{:1000000000}'.format(1) }}", "width"),
        ("{{ '%1000000000s' % 'x' }}", "width"),
        ("{{ 3 ** 2000000 }}", "bits"),
        ("{{ (7 ** 100000) ** 1000 }}", "bits"),
        ("{% for i in range(3000) %}{{ 'x' * 4000 }}{% endfor %}", f"{MAX_OUTPUT:,}"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
        ("{{ ''.__class__.__mro__ }}", "SecurityError"),
        ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
    ],
)
def test_a_hostile_template_stops_with_a_template_error(source: str, words: str) -> None:
    start = time.monotonic()
    with pytest.raises(TemplateError) as error:
        ChatTemplate(source, bos_token="", eos_token="").render(MESSAGES)
    assert words in str(error.value)
    assert time.monotonic() - start < 30  # no wall-clock claim beyond "it ends"


def test_a_template_that_does_not_compile() -> None:
    with pytest.raises(TemplateError, match="TemplateSyntaxError"):
        ChatTemplate("{% for x in %}", bos_token="", eos_token="")


def _with_template(source: Path, target: Path, template: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--chat-template", template, "--force",
         str(source), str(target)],
        check=True, capture_output=True,
    )
    return target


@pytest.mark.model
def test_solve_with_a_hostile_template_exits_7_naming_the_file(tmp_path: Path, smollm_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from qwq_local.cli import main

    model = _with_template(smollm_path, tmp_path / "loop.gguf", LOOP)
    problem = tmp_path / "p.md"
    problem.write_text("What is 2+2?")
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(problem), "--model", str(model), "--max-tokens", "4", "--ctx", "512"])
    err = capsys.readouterr().err
    assert exc.value.code == 7 and "loop.gguf" in err and "chat template" in err and err.count("\n") == 1


@pytest.mark.model
def test_solve_with_a_template_that_does_not_compile_exits_7(tmp_path: Path, smollm_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """llama-cpp-python compiles the template as the model loads: its TemplateSyntaxError was exit 1 (the audit)."""
    from qwq_local.cli import main

    model = _with_template(smollm_path, tmp_path / "syntax.gguf", "{% for x in %}")
    problem = tmp_path / "p.md"
    problem.write_text("What is 2+2?")
    with pytest.raises(SystemExit) as exc:
        main(["solve", str(problem), "--model", str(model), "--max-tokens", "4", "--ctx", "512"])
    err = capsys.readouterr().err
    assert exc.value.code == 7 and "syntax.gguf" in err and "does not compile" in err and err.count("\n") == 1


# llama-cpp-python compiles every template of a GGUF as it opens it, folding constants with no bound (the audit:
# `{{ (7 ** 100000) ** 1000 }}` hung `qwq solve` for good, `{% for x in %}` was exit 1).

@pytest.mark.parametrize("source", [
    "{{ (7 ** 100000) ** 1000 }}",  # time
])
def test_what_llama_cpp_would_fold_forever_is_refused_in_bounded_time(source: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.engine import template

    monkeypatch.setattr(template, "FOREIGN_COMPILE_SECONDS", 2.0)
    start = time.monotonic()
    with pytest.raises(TemplateError, match="compiling it (failed|passed 2 s)"):
        template.check_llama_cpp_compiles([CHATML, source])
    assert time.monotonic() - start < 30


def test_a_real_template_is_not_sent_to_a_child_and_a_broken_one_is_refused_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.engine import template

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a child for a template without constants"))
    qwen = ("{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not "
            "loop.first) %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
            "{%- endif %}{%- if loop.index0 % 2 == 0 %}{%- endif %}{%- endfor %}{{ messages | length }}")
    template.check_llama_cpp_compiles([CHATML, qwen, "{% generation %}x{% endgeneration %}"])
    with pytest.raises(TemplateError, match="TemplateSyntaxError"):
        template.check_llama_cpp_compiles(["{% for x in %}"])


def test_a_gguf_whose_template_llama_cpp_cannot_compile_is_exit_7_before_llama_cpp_opens_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf
    import numpy as np

    from qwq_local.engine import model, template
    from qwq_local.errors import ExitCode, ModelFileError

    monkeypatch.setattr(template, "FOREIGN_COMPILE_SECONDS", 2.0)
    path = tmp_path / "power.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_chat_template("{{ (7 ** 100000) ** 1000 }}")
    writer.add_tensor("token_embd.weight", np.zeros((32, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelFileError) as error:
        model.count_tokens(path, "2+2?")  # what a solve calls first: a vocab-only llama_cpp.Llama
    assert error.value.exit_code == ExitCode.CORRUPT_MODEL and "power.gguf" in error.value.message


def _settings(tmp_path: Path, template: str | None, model: str = "smollm2-135m") -> Any:
    from qwq_local.config import load_settings

    return load_settings({"model": model, "models_dir": tmp_path / "models", "chat_template": template}, env={})


def test_a_chat_template_given_is_read_bounded_and_compiled_before_any_model(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from qwq_local.app import runtime
    from qwq_local.engine import template
    from qwq_local.errors import ExitCode, QwqError

    assert runtime.chat_template_override(_settings(tmp_path, None)) is None
    assert runtime.chat_template_override(_settings(tmp_path, "ChatML")) == template.CHATML
    good = tmp_path / "t.jinja"
    good.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert runtime.chat_template_override(_settings(tmp_path, str(good))) == good.read_text()
    huge, binary, broken = tmp_path / "huge.jinja", tmp_path / "bin.jinja", tmp_path / "broken.jinja"
    huge.write_text("x" * (template.MAX_TEMPLATE_BYTES + 1))
    binary.write_bytes(b"\xff\xfe{{ x }}")
    broken.write_text("{% for m in messages %}")
    monkeypatch.setattr(runtime, "locate", lambda *a, **k: pytest.fail("got as far as the model"))
    for value, code, said in ((tmp_path / "none.jinja", ExitCode.FILE_NOT_FOUND, "no such file"),
                              (tmp_path, ExitCode.IS_A_DIRECTORY, "a directory"),
                              (huge, ExitCode.BAD_DATA, "over 1 MiB"), (binary, ExitCode.BAD_DATA, "not UTF-8"),
                              (Path("/dev/zero"), ExitCode.NOT_A_REGULAR_FILE, "not a regular file"),
                              (broken, ExitCode.BAD_DATA, "does not compile")):
        with pytest.raises(QwqError, match=said) as caught:
            runtime.plan_for(_settings(tmp_path, str(value)))
        assert caught.value.exit_code == code and "--chat-template" in str(caught.value)
    locked = tmp_path / "locked" / "t.jinja"  # a directory it may not enter (EACCES on stat, for a user not root)

    def refused(self: Path) -> bool:
        raise PermissionError(13, "Permission denied")

    settings = _settings(tmp_path, str(locked))
    monkeypatch.setattr(Path, "is_dir", refused)
    with pytest.raises(QwqError, match="cannot be read") as caught:
        runtime.chat_template_override(settings)
    assert caught.value.exit_code == ExitCode.PERMISSION_DENIED


@pytest.mark.model
def test_the_chat_template_given_replaces_the_models_own(tmp_path: Path, smollm_path: Path) -> None:
    from qwq_local.app import runtime
    from qwq_local.dialog.messages import Message

    marked = tmp_path / "marked.jinja"
    marked.write_text("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}<<assistant>>")
    for value, expected in ((None, "<|im_start|>user\nhi"), (str(marked), "<<user>>hi<<assistant>>")):
        settings = _settings(tmp_path, value, model=str(smollm_path))
        model = runtime.load(runtime.plan_for(settings), settings)
        try:
            assert expected in model.render_chat([Message("user", "hi")])
        finally:
            model.close()
