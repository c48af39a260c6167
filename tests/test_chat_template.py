"""A GGUF's chat template is untrusted code: sandboxed, bounded in steps and size, a failure is a bad model file."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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
