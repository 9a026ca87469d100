"""The shape of the code: imports run one way, modules stay small, the library seeds no global RNG, prints nothing and
leaves matplotlib's backend alone."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["encoders", "decoders", "priors", "diffmvae", "experiments"]  # each may import only those before it
LIBRARY = ORDER[:4]


def modules(package):
    return sorted((ROOT / package).rglob("*.py"))


def imported_packages(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("package", ORDER)
def test_imports_run_one_way(package):
    later = set(ORDER[ORDER.index(package) + 1:])
    for path in modules(package):
        bad = later & set(imported_packages(path))
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}, which depend on {package}"


def test_no_library_module_is_over_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for pkg in LIBRARY for p in modules(pkg) if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_library_never_seeds_the_global_rng_or_prints():
    for pkg in LIBRARY:
        for path in modules(pkg):
            if path.name == "cli.py":  # the command line seeds at each command's entry
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
            "import diffmvae, diffmvae.sampling, diffmvae.evaluation.report, diffmvae.evaluation.command, diffmvae.callbacks, diffmvae.cli;"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    for pkg in LIBRARY:
        for path in modules(pkg):
            assert "matplotlib.use(" not in path.read_text() and "import matplotlib.pyplot" not in path.read_text(), path
