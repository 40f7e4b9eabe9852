"""The package's shape (docs/architecture.md): no import cycles, dependencies point down,
lazy subpackages, one registry helper, nothing points outside the repository."""
import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "diffinfer"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module an import statement in ``module`` names."""
    if level == 0:
        return name or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(top_level_only: bool = True) -> dict[str, set[str]]:
    """Module -> the diffinfer modules it imports (module level only: imports inside
    functions run on call, after every module has loaded)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text())
        nodes = tree.body if top_level_only else list(ast.walk(tree))
        for node in nodes:
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, path.name == "__init__.py", node.level, node.module)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                # a module's own packages are loaded before it: importing from them is no edge
                if t in modules and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
                    # importing a submodule runs its package's __init__ first
                    parent = t.rsplit(".", 1)[0]
                    while parent in modules and parent != mod and not mod.startswith(parent + "."):
                        graph[mod].add(parent)
                        parent = parent.rsplit(".", 1)[0] if "." in parent else ""
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_dependencies_point_down():
    """The library never imports the command line or the web demo; scaling and inverse problems do not
    import zoo evaluation code (quality measures, tasks, training recipes; any import, also
    inside functions). Loading a bundled checkpoint (``zoo.load``) is allowed."""
    graph = import_graph(top_level_only=False)
    for mod, deps in graph.items():
        if not mod.startswith(("diffinfer.cli", "diffinfer.demos")):  # the structured demos are CLI parts
            assert not any(d == "diffinfer.cli" or d.startswith("diffinfer.cli.") for d in deps), (mod, deps)
        if not mod.startswith(("diffinfer.cli", "diffinfer.web")):  # the web demo sits beside the CLI
            assert not any(d == "diffinfer.web" or d.startswith("diffinfer.web.") for d in deps), (mod, deps)
        if mod.startswith(("diffinfer.scaling", "diffinfer.inverse")):
            bad = {d for d in deps if d.startswith(("diffinfer.zoo.quality", "diffinfer.zoo.tasks",
                                                    "diffinfer.zoo.recipes", "diffinfer.zoo.data"))}
            assert not bad, (mod, bad)


def test_subpackages_load_lazily_from_the_top():
    """``import diffinfer as di; di.toys`` works without importing the subpackage first,
    and ``import diffinfer`` alone does not load them."""
    code = ("import sys, diffinfer as di; "
            "lazy = ['toys', 'mdm', 'guidance', 'zoo', 'scaling', 'inverse', 'nets', 'metrics']; "
            "assert not any(f'diffinfer.{n}' in sys.modules for n in lazy), sorted(sys.modules); "
            "[getattr(di, n) for n in lazy]; "
            "assert all(f'diffinfer.{n}' in sys.modules for n in lazy)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    import diffinfer as di
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        di.nonexistent  # noqa: B018


def test_typed_marker_and_no_tensor_aliases():
    assert (PACKAGE / "py.typed").is_file()
    offenders = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if "\nTensor = torch.Tensor" in p.read_text()]
    assert not offenders, offenders


def test_nothing_points_outside_the_repository():
    paths = list(PACKAGE.rglob("*.py")) + [ROOT / "README.md"] + list((ROOT / "docs").glob("*.md"))
    offenders = [str(p.relative_to(ROOT)) for p in paths if "DESIGN.md" in p.read_text() or "../shared" in p.read_text()]
    assert not offenders, offenders
    assert (ROOT / "docs" / "architecture.md").is_file()


@pytest.mark.parametrize("module,name", [("diffinfer.process", "PROCESSES"), ("diffinfer.solvers", "REGISTRY"),
                                         ("diffinfer.grids", "REGISTRY")])
def test_name_lookups_use_the_one_registry(module, name):
    from diffinfer.registry import Registry
    registry = getattr(importlib.import_module(module), name)
    assert isinstance(registry, Registry)
    with pytest.raises(ValueError, match=r"unknown .*'no-such-name'; valid: "):
        registry.get("no-such-name")
    first = registry.names()[0]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(first, lambda: None)


def test_integrations_import_their_libraries_lazily():
    """``import diffinfer`` and importing a bridge module load no diffusers / transformers /
    k-diffusion: they are imported inside the functions that use them."""
    code = ("import sys, diffinfer as di; di.integrations; di.thresholding; "
            "import diffinfer.integrations.diffusers, diffinfer.integrations.k_diffusion, "
            "diffinfer.integrations.transformers; "
            "heavy = [m for m in ('diffusers', 'transformers', 'k_diffusion') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
