"""The ray_rdt package has no import cycle: each module's imports of the
package's own modules, at any depth (a function-level import included), form
a graph with no cycle, so every module can be imported on its own and its
dependencies read from the top down."""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "python", "ray_rdt")


def own_imports(path):
    """The ray_rdt modules a source file imports, anywhere in it."""
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "ray_rdt"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray_rdt":
            if node.module == "ray_rdt":
                # `from ray_rdt import x`: a submodule x, or a name of the package itself.
                for a in node.names:
                    sub = os.path.join(PACKAGE, a.name + ".py")
                    out.add(f"ray_rdt.{a.name}" if os.path.exists(sub) else "ray_rdt")
            else:
                out.add(node.module)
    return out


def graph():
    modules = {}
    for name in os.listdir(PACKAGE):
        if name.endswith(".py"):
            module = "ray_rdt" if name == "__init__.py" else f"ray_rdt.{name[:-3]}"
            modules[module] = own_imports(os.path.join(PACKAGE, name)) - {module}
    return modules


def find_cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_cycle():
    edges = graph()
    assert len(edges) > 20  # the walk found the package
    cycle = find_cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
