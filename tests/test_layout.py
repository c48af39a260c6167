"""The layers stay as README's Layout draws them: read from the imports of every module (including lazy ones)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qwq_local"


def _imports() -> dict[str, set[str]]:
    """Module name -> every module it imports (absolute names; `from m import x` counts m and m.x)."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out[name] |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out[name] |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return out


IMPORTS = _imports()


def importers(prefix: str) -> set[str]:
    return {module for module, names in IMPORTS.items()
            if any(n == prefix or n.startswith(prefix + ".") for n in names)}


def package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_only_the_engine_imports_llama_cpp_and_only_the_catalog_imports_the_hub() -> None:
    assert {package(m) for m in importers("llama_cpp")} == {"engine"}
    assert {package(m) for m in importers("huggingface_hub")} == {"catalog"}


def test_the_search_core_is_pure_python_over_its_protocol() -> None:
    allowed = {"search", "dialog", "errors"}
    for module, names in IMPORTS.items():
        if package(module) == "search":
            reached = {package(n) for n in names if n.startswith("qwq_local.")}
            assert reached <= allowed, f"{module} imports {sorted(reached - allowed)}"
            assert not {n.split(".")[0] for n in names} & {"llama_cpp", "huggingface_hub", "numpy", "typer"}


def test_no_command_imports_another_and_services_never_import_front_ends() -> None:
    for module, names in IMPORTS.items():
        commands = {n for n in names if n.startswith("qwq_local.cli.")} - {"qwq_local.cli.root"}
        if package(module) == "cli" and module not in ("qwq_local.cli", "qwq_local.cli.root"):
            assert not {c for c in commands if c.count(".") == 2}, f"{module} imports {sorted(commands)}"
        if package(module) in ("app", "search", "value", "engine", "catalog", "dialog", "problems"):
            front = {package(n) for n in names if n.startswith("qwq_local.")} & {"cli", "serve", "render", "bench"}
            assert not front, f"{module} (a service or lower layer) imports the front end {sorted(front)}"


def test_commands_reach_the_engine_only_through_the_services() -> None:
    for module, names in IMPORTS.items():
        if package(module) == "cli":
            engine = sorted(n for n in names if n == "qwq_local.engine" or n.startswith("qwq_local.engine."))
            assert not engine, f"{module} imports {engine}: a command goes through qwq_local.app"


def test_no_module_takes_another_modules_private_names() -> None:
    private = sorted(n for names in IMPORTS.values() for n in names
                     if n.startswith("qwq_local.") and n.rsplit(".", 1)[-1].startswith("_")
                     and not n.rsplit(".", 1)[-1].endswith("__"))  # dunders (__version__) are public
    assert private == []
