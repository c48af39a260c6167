"""`--show-tree`: the explored tree drawn as text, the chosen path marked."""

from __future__ import annotations

from qwq_local.render.tree_view import render_tree, shorten


def node(id, parent, depth, text="", f=0.0, **kw):
    base = dict(id=id, parent=parent, depth=depth, text=text, reward=None, g=f, h=0.0, f=f, terminal=False,
                finished=False, expanded=False, dropped=False, cut=False, chosen=False, answer=None)
    base.update(kw)
    return base


TREE = [
    node(0, None, 0, expanded=True, chosen=True),
    node(1, 0, 1, "First, 48 / 2 = 24 clips in May.\n\n", 0.9, expanded=True, chosen=True),
    node(2, 0, 1, "Maybe   the answer\nis 10.", 0.2, dropped=True),
    node(3, 1, 2, "So 48 + 24 = 72. \\boxed{72}", 0.8, terminal=True, answer="72", chosen=True),
    node(4, 1, 2, "x" * 300, 0.5),
]


def test_chosen_path_marked_children_by_f_and_text_shortened() -> None:
    out = render_tree(TREE, width=40)
    lines = out.splitlines()
    assert lines[0].startswith("★ question")
    assert lines[1].startswith("├─ ★ g=0.90 h=0.00 f=0.90  First, 48 / 2 = 24 clips in May.")
    assert lines[2].startswith("│  ├─ ★ ") and "[answer 72]" in lines[2]
    assert lines[3].startswith("│  └─   ") and lines[3].endswith("… [open]") and len(lines[3]) < 80
    assert lines[4].startswith("└─   ") and "Maybe the answer is 10. [dropped]" in lines[4]
    assert lines[-1] == "5 nodes · 1 terminal · chosen path: 0 → 1 → 3"
    assert "\x1b[" not in out


def test_color_and_node_limit() -> None:
    colored = render_tree(TREE, color=True)
    assert "\x1b[1m" in colored and "\x1b[2m" in colored
    cut = render_tree(TREE, max_nodes=2)
    assert "… 3 more nodes" in cut
    assert render_tree([]) == "(empty tree)"
    assert shorten("a  b\n c", 10) == "a b c" and shorten("abcdef", 4) == "abc…"
