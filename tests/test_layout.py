"""The shape of the code: imports run one way (between packages, between the rooms of ``diffmvae``, and with no cycle
anywhere), modules stay small, capabilities are asked of declared members rather than probed, the library seeds no
global RNG, prints nothing and leaves matplotlib's backend alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["encoders", "decoders", "priors", "diffmvae", "experiments"]  # each may import only those before it
LIBRARY = ORDER[:4]
# The rooms of diffmvae, bottom up: each may import only itself and the rooms before it.
ROOMS = ["version", "io", "devices", "data", "model", "training", "store", "generation", "evaluation", "pipeline", "commands"]
# Third-party packages a function may import (heavy, and needed only by that function); the line says why.
HEAVY = {"transformers", "tokenizers", "sklearn", "torchmetrics", "matplotlib", "pandas"}
# Probing (hasattr / getattr with a default) is for objects the library does not define: (file, receiver) pairs.
FOREIGN = {
    ("diffmvae/training/module.py", "loader"): "a torch DataLoader, possibly re-wrapped by Lightning",
    ("diffmvae/training/module.py", "sampler"): "the DataLoader's sampler: the library's epoch sampler or torch's",
    ("diffmvae/training/module.py", "fn"): "autograd graph nodes",
    ("diffmvae/data/text.py", "hf"): "a transformers tokenizer",
    ("diffmvae/evaluation/suite.py", "datamodule"): "a user's LightningDataModule (class_path) need not be the library's",
    ("diffmvae/evaluation/classifier.py", "datamodule"): "as above",
    ("diffmvae/evaluation/runs.py", "run.datamodule"): "as above",
    ("diffmvae/training/callbacks.py", "trainer.datamodule"): "as above",
    ("diffmvae/commands/checks.py", "datamodule"): "as above",
    ("diffmvae/commands/checks.py", "logger"): "a logger config (dict) or a Lightning logger",
    ("diffmvae/commands/common.py", "args"): "an argparse Namespace",
    ("priors/training.py", "self"): "a dataclass reading its own fields by name",
}


def modules(package):
    return sorted((ROOT / package).rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(paths: list[Path], root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: modules it imports}`` over ``paths``, from every import statement anywhere in a module (top level,
    in functions, under ``if TYPE_CHECKING``); ``from pkg import name`` counts as importing ``pkg.name`` when that is
    a module."""
    names = {module_name(p, root): p for p in paths}

    def resolve(dotted: str) -> str | None:
        parts = dotted.split(".")
        while parts and ".".join(parts) not in names:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            edges |= {m for t in targets if (m := resolve(t)) is not None and m != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def library_graph():
    return import_graph([p for pkg in LIBRARY for p in modules(pkg)])


@pytest.mark.parametrize("package", ORDER)
def test_imports_run_one_way(package):
    later = set(ORDER[ORDER.index(package) + 1:])
    for path in modules(package):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
        bad = later & imported
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}, which depend on {package}"


def test_no_import_cycle_anywhere_in_the_library():
    assert cycles(library_graph()) == []


def test_the_cycle_finder_finds_a_function_level_cycle(tmp_path):
    """The check above can fail: a cycle closed by an import inside a function, or under TYPE_CHECKING, is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    graph = import_graph(sorted(pkg.rglob("*.py")), tmp_path)
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_rooms_of_diffmvae_import_one_way():
    graph = library_graph()
    for module, imported in graph.items():
        parts = module.split(".")
        if parts[0] != "diffmvae" or len(parts) < 2 or parts[1] == "__main__":
            continue
        room = ROOMS.index(parts[1])
        later = sorted({m for m in imported if m.startswith("diffmvae.") and ROOMS.index(m.split(".")[1]) > room})
        assert not later, f"{module} ({parts[1]}) imports {later}, from rooms above it"


def test_function_level_imports_are_only_heavy_optional_dependencies_and_say_so():
    for pkg in LIBRARY:
        for path in modules(pkg):
            source = path.read_text()
            lines = source.splitlines()
            for fn in ast.walk(ast.parse(source)):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        top = (node.module if isinstance(node, ast.ImportFrom) else node.names[0].name).split(".")[0]
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        assert top in HEAVY, f"{where} imports {top} inside a function; import it at the top"
                        assert "# heavy:" in lines[node.lineno - 1], f"{where}: say why the import waits (# heavy: ...)"


def test_no_library_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in LIBRARY for p in modules(pkg) if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_capabilities_are_declared_members_never_probed():
    """``hasattr``, ``getattr`` with a default and method-identity tests (``type(x).f is Base.f``) are for objects the
    library does not define (:data:`FOREIGN`); a decoder, model, process, sampler or judge is asked through the
    members its base class declares."""
    for pkg in LIBRARY:
        for path in modules(pkg):
            rel = str(path.relative_to(ROOT))
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (
                        node.func.id == "hasattr" or node.func.id == "getattr" and len(node.args) == 3):
                    receiver = ast.unparse(node.args[0])
                    assert (rel, receiver) in FOREIGN or rel.startswith("diffmvae/data/"), (
                        f"{rel}:{node.lineno} probes {receiver} with {node.func.id}; declare the capability on its base class")
                if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
                    sides = [node.left, *node.comparators]
                    assert not any(isinstance(s, ast.Attribute) and isinstance(s.value, ast.Call) and ast.unparse(s.value.func) == "type"
                                   for s in sides), f"{rel}:{node.lineno} tests a method's identity: {ast.unparse(node)}"


def test_library_never_seeds_the_global_rng_or_prints():
    for pkg in LIBRARY:
        for path in modules(pkg):
            if path.parent.name == "commands":  # the command line seeds at each command's entry
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    name = ast.unparse(node.func)
                    assert name not in ("torch.manual_seed", "np.random.seed", "random.seed", "torch.random.manual_seed",
                                        "torch.cuda.manual_seed_all", "print"), f"{path.relative_to(ROOT)}:{node.lineno} calls {name}"


def test_importing_the_library_leaves_matplotlib_alone():
    """A user's backend survives importing every module that draws (they draw on matplotlib.figure.Figure objects,
    which need no backend); importing used to switch it to Agg."""
    code = ("import matplotlib; matplotlib.use('svg');"
            "import diffmvae, diffmvae.generation.sampling, diffmvae.generation.traversal, diffmvae.evaluation.report, "
            "diffmvae.pipeline.report, diffmvae.training, diffmvae.commands.main;"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for pkg in LIBRARY:
        for path in modules(pkg):
            assert "matplotlib.use(" not in path.read_text() and "import matplotlib.pyplot" not in path.read_text(), path
