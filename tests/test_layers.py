"""The package's layers are real: no import cycle and no import of a higher layer, counting imports
inside functions and the package ``__init__`` that importing ``a.b.c`` runs (read from the source's
AST, so nothing is imported here)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "smallmed"

# lowest first; a module may import its own layer or a lower one
LAYERS = [
    {"errors", "registry", "io", "hub", "roles", "fields"},
    {"metrics", "data", "analysis", "report"},
    {"models"},
    {"reparam"},
    {"methods"},
    {"adapters", "export"},
    {"config"},
    {"schedules"},
    {"train"},
    {"ra2", "explain"},
    {"studies", "tune"},
    {"demo"},
    {"cli", "__init__"},
]
LEVEL = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = ["smallmed", *p.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines |= set(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _edges() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = name.split(".") if is_pkg else name.split(".")[:-1]
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "smallmed"}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != "smallmed":
                    continue
                for a in node.names:
                    targets.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod)
        ran: set[str] = set()
        for t in targets:  # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
            parts = t.split(".")
            for i in range(2, len(parts) + 1):
                m = ".".join(parts[:i])
                if m in mods and m != name and not name.startswith(m + "."):  # own parents are already running
                    ran.add(m)
        graph[name] = ran
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LEVEL, f"{module}: add its package to LAYERS in this test"
    return LEVEL[top]


def test_no_module_imports_a_higher_layer():
    bad = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, ts in _edges().items()
        for t in sorted(ts)
        if _layer(t) > _layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph = _edges()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                cycles.append(stack[stack.index(w) :] + [w])
            elif w not in state:
                visit(w)
        stack.pop()
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            visit(v)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:5])


def test_the_checker_sees_lazy_imports_and_package_inits():
    """Imports inside functions and the package __init__ they run must count, or the two tests above prove little."""
    edges = _edges()
    assert "smallmed.analysis.cost" in edges["smallmed.reparam.lowrank"]  # imported inside count_flops
    assert {"smallmed.train", "smallmed.train.cell"} <= edges["smallmed.ra2.localise"]  # runs train/__init__


def test_every_package_docstring_names_each_of_its_modules():
    """Each package folder says in its __init__ docstring what each module holds (one line per module)."""
    import ast as _ast

    for init in sorted(SRC.rglob("__init__.py")):
        if init.parent == SRC:
            continue
        doc = _ast.get_docstring(_ast.parse(init.read_text())) or ""
        mods = sorted(p.stem for p in init.parent.glob("*.py") if p.stem not in ("__init__", "__main__"))
        missing = [m for m in mods if f"``{m}``" not in doc]
        assert not missing, f"{init.parent.name}/__init__.py does not describe {missing}"


def test_the_tests_mirror_the_package():
    """tests/ has one folder per package of src/smallmed (tests of top-level modules sit in tests/ itself)."""
    tests = Path(__file__).resolve().parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and any(p.glob("test_*.py"))}
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert folders and folders <= packages, sorted(folders - packages)
