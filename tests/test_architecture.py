"""The layers of docs/architecture.md, read from the code's own imports with the standard library's ast:
no import from a lower layer to a higher one, nothing imports train.py or scripts/, no cycle among files."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom to top; a module may import its own package and the layers below (configs and utils are the bottom)
LAYERS = {"configs": 0, "utils": 1, "data": 2, "models": 2, "engine": 3, "sweep": 4, "inference": 4,
          "train": 5, "scripts": 5}


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".git") or any(p.startswith(".") for p in rel.parts):
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, name: str, known) -> set[str]:
    """The project modules `name` imports (a package import counts as its __init__), anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([p for p in parts if p] + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, name, mods) for name, path in mods.items()}


def layer(name: str) -> int:
    return LAYERS[name.split(".")[0]]


def test_every_module_has_a_layer():
    assert {m.split(".")[0] for m in graph()} <= set(LAYERS)


def violations(g: dict) -> list[str]:
    """Imports up a layer, or sideways between two packages of one layer."""
    return [f"{a} -> {b}" for a, deps in g.items() for b in deps
            if layer(b) > layer(a) or (layer(b) == layer(a) and a.split(".")[0] != b.split(".")[0])]


def cycles(g: dict) -> list[list[str]]:
    state, found = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def test_imports_only_run_down():
    assert violations(graph()) == []


def test_nothing_imports_train_or_scripts():
    assert [f"{a} -> {b}" for a, deps in graph().items() for b in deps if b.split(".")[0] in ("train", "scripts")] == []


def test_no_cycle_among_files():
    assert cycles(graph()) == []


def test_the_checks_see_wrong_imports(tmp_path):
    """The checks themselves: planted upward and sideways imports and a cycle are found, a clean graph is not."""
    planted = {"utils.a": {"engine.b"}, "engine.b": {"utils.a"}, "data.x": {"models.y"}, "models.y": set(),
               "sweep.s": {"inference.i"}, "inference.i": set()}
    assert sorted(violations(planted)) == ["data.x -> models.y", "sweep.s -> inference.i", "utils.a -> engine.b"]
    assert cycles(planted) == [["engine.b", "utils.a", "engine.b"]]
    clean = {"engine.b": {"utils.a", "data.x"}, "utils.a": set(), "data.x": {"utils.a"}}
    assert violations(clean) == [] and cycles(clean) == []
    src = tmp_path / "x.py"
    src.write_text("from engine import build\nimport utils.io\nfrom .sibling import f\n")
    known = {"engine", "engine.build", "utils.io", "pkg.sibling"}
    assert imports(src, "pkg.x", known) == {"engine", "engine.build", "utils.io", "pkg.sibling"}
