"""The package's import graph: no cycles, parts on floors that import only downward (or across their own floor), no
library module importing `bin` or absl flags, and attack components that import only `attacks.core` and
`attacks.config`. Read statically from the source, with every import counted (module level or inside functions)."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rst_tf")
ATTACK_COMPONENTS = ("pgd", "apgd", "fab", "square", "bandits", "cw_l2", "trades", "malt")
# The library's parts (rst_tf/<part>/), lowest floor first; bin/ stands above them all. A part imports only parts on
# its own floor or below.
FLOORS = (
    ("method",),
    ("networks", "data"),
    ("attacks",),
    ("measuring",),
    ("search", "training"),
    ("deployment",),
    ("reports",),
    ("study",),
)
FLOOR_OF = {part: floor for floor, parts in enumerate(FLOORS) for part in parts}


def _module_name(path):
    relative = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def _imports(path, modules):
    """The project modules (and other top-level names) that the file at `path` imports."""
    name = _module_name(path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    return found


def _graph():
    paths = [os.path.join(folder, file) for folder, _, files in os.walk(ROOT)
             for file in files if file.endswith(".py")]
    modules = {_module_name(path): path for path in paths}
    return {name: _imports(path, modules) for name, path in modules.items()}, modules


def test_import_graph_of_the_package_has_no_cycle():
    graph, modules = _graph()
    edges = {name: {other for other in imported if other in modules and other != name}
             for name, imported in graph.items()}
    # A package imports its own submodules by design (its __init__ re-exports them): only the others count.
    edges = {name: {other for other in targets if not other.startswith(name + ".")} for name, targets in edges.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(trail + [name])
        state[name] = "open"
        for other in sorted(edges[name]):
            visit(other, trail + [name])
        state[name] = "done"

    for name in sorted(edges):
        visit(name, [])
    assert len(modules) > 40


def test_library_never_imports_the_apps_or_flags():
    graph, _ = _graph()
    for name, imported in graph.items():
        assert not any(other == "bin" or other.startswith("bin.") for other in imported), name
        assert "absl.flags" not in imported and "absl.app" not in imported, name


def test_attack_components_import_only_core_and_config():
    graph, _ = _graph()
    for component in ATTACK_COMPONENTS:
        project = {other for other in graph[f"rst_tf.attacks.{component}"] if other.startswith("rst_tf")}
        assert project <= {"rst_tf.attacks", "rst_tf.attacks.core", "rst_tf.attacks.config"}, (component, project)


def _part(module):
    """The part (`rst_tf.<part>...`) a project module belongs to; None for the package root and other names."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[0] == "rst_tf" else None


def upward_imports(graph):
    """(importer, imported) pairs where a part imports a part on a higher floor."""
    found = []
    for name, imported in graph.items():
        here = _part(name)
        for other in imported:
            there = _part(other)
            if here is not None and there in FLOOR_OF and FLOOR_OF[there] > FLOOR_OF[here]:
                found.append((name, other))
    return sorted(found)


def test_every_module_sits_in_a_part_on_a_floor():
    _, modules = _graph()
    homeless = sorted(name for name in modules if name != "rst_tf" and _part(name) not in FLOOR_OF)
    assert not homeless, f"modules outside the parts {sorted(FLOOR_OF)}: {homeless}"


def test_parts_import_only_their_floor_or_below():
    graph, _ = _graph()
    upward = upward_imports(graph)
    assert not upward, "imports running up a floor (" + " -> ".join("/".join(parts) for parts in FLOORS) + "): " + \
        ", ".join(f"{name} imports {other}" for name, other in upward)


def test_the_floor_check_sees_an_upward_import():
    assert upward_imports({"rst_tf.method.masking": {"rst_tf.deployment.r2s", "rst_tf.method"},
                           "rst_tf.study.sweep": {"rst_tf.training.loop", "rst_tf.method.layers"},
                           "rst_tf.search.nested": {"rst_tf.training", "rst_tf.measuring.attacked"}}) == [
        ("rst_tf.method.masking", "rst_tf.deployment.r2s")]
