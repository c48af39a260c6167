"""`qwq solve --show-tree`: the explored search tree as indented text, the chosen path highlighted."""

from __future__ import annotations

from typing import Any, Sequence

BOLD, DIM, RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


def shorten(text: str, width: int) -> str:
    """One line of at most `width` characters: whitespace collapsed, an ellipsis where cut."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= width else flat[: max(width - 1, 0)] + "…"


def _marks(node: dict[str, Any]) -> str:
    marks = []
    if node.get("terminal"):
        marks.append(f"answer {shorten(node['answer'], 24)}" if node.get("answer") is not None else "end")
    if node.get("dropped"):
        marks.append("dropped")
    if node.get("cut"):
        marks.append("depth limit")
    if not node.get("expanded") and not node.get("terminal") and not node.get("dropped") and not node.get("cut"):
        marks.append("open")
    return f" [{', '.join(marks)}]" if marks else ""


def _label(node: dict[str, Any], width: int) -> str:
    if node["parent"] is None:
        return "question"
    scores = f"g={node['g']:.2f} h={node['h']:.2f} f={node['f']:.2f}"
    return f"{scores}  {shorten(node['text'], width)}{_marks(node)}"


def render_tree(tree: Sequence[dict[str, Any]], *, color: bool = False, width: int = 72,
                max_nodes: int = 400) -> str:
    """Draw `tree` (SearchTree.as_dicts()) with box characters; chosen nodes get a ★ (and bold with color).

    Children are listed best f first; past `max_nodes` lines the rest is summarised in one line.
    """
    if not tree:
        return "(empty tree)"
    children: dict[int | None, list[dict[str, Any]]] = {}
    for node in tree:
        children.setdefault(node["parent"], []).append(node)
    for kids in children.values():
        kids.sort(key=lambda n: (not n.get("chosen"), -n["f"], n["id"]))
    lines: list[str] = []
    shown = 0

    def walk(node: dict[str, Any], prefix: str, last: bool, root: bool) -> None:
        nonlocal shown
        if shown >= max_nodes:
            return
        shown += 1
        star = "★ " if node.get("chosen") else "  "
        label = _label(node, width)
        if color:
            label = f"{BOLD}{label}{RESET}" if node.get("chosen") else f"{DIM}{label}{RESET}"
        branch = "" if root else ("└─ " if last else "├─ ")
        lines.append(f"{prefix}{branch}{star}{label}")
        kids = children.get(node["id"], [])
        inner = prefix + ("" if root else ("   " if last else "│  "))
        for i, kid in enumerate(kids):
            walk(kid, inner, i == len(kids) - 1, False)

    for root in children.get(None, []):
        walk(root, "", True, True)
    if shown < len(tree):
        lines.append(f"… {len(tree) - shown} more nodes (see --trace FILE.json)")
    chosen = [n for n in tree if n.get("chosen")]
    lines.append(f"{len(tree)} nodes · {sum(1 for n in tree if n.get('terminal'))} terminal · "
                 f"chosen path: {' → '.join(str(n['id']) for n in sorted(chosen, key=lambda n: n['depth']))}")
    return "\n".join(lines)
