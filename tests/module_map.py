"""The project's import graph by room (`data`, `models`, `training`, `train`, ...), read from the
source with `ast`: what docs/architecture.md's module map must match (tests/test_module_map.py).

A room is the first name under `internvqa_jax` (`internvqa_jax.data.pipeline` is in `data`), the
package itself (`internvqa_jax`, its lazy `load`), `weight_conversion` or `configs`. Imports inside functions
count: they are arrows too.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("internvqa_jax", "weight_conversion", "configs")


def module_files() -> dict[str, pathlib.Path]:
    """{dotted module name: file} of every module of the package and of weight_conversion."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def room(module: str) -> str:
    """The room of a dotted module name."""
    parts = module.split(".")
    if parts[0] != "internvqa_jax" or len(parts) == 1:
        return parts[0]
    return parts[1]


def _targets(node: ast.AST, modules: dict[str, pathlib.Path]) -> list[str]:
    """Project modules an import statement reads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in modules:  # `import a.b.c` of a module: its longest known prefix
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def module_arrows() -> dict[str, set[str]]:
    """{module: project modules it imports}."""
    modules = module_files()
    return {
        module: {t for node in ast.walk(ast.parse(path.read_text())) for t in _targets(node, modules) if t != module}
        for module, path in modules.items()
    }


def room_arrows() -> dict[str, set[str]]:
    """{room: rooms its modules import}, self-imports left out."""
    arrows: dict[str, set[str]] = {}
    for module, targets in module_arrows().items():
        arrows.setdefault(room(module), set()).update(room(t) for t in targets if room(t) != room(module))
    return arrows


def package_arrows(package: str) -> dict[str, set[str]]:
    """{module: modules of the same package it imports} for the modules of `package` (short names)."""
    prefix = package + "."
    inside = {m: ts for m, ts in module_arrows().items() if m.startswith(prefix)}
    return {m[len(prefix) :]: {t[len(prefix) :] for t in ts if t.startswith(prefix)} for m, ts in inside.items()}


def arrow_lines(arrows: dict[str, set[str]]) -> list[str]:
    """The arrows as docs/architecture.md lists them: "- `src` -> `dst`, `dst`" (sorted)."""
    return [
        f"- `{src}` -> " + (", ".join(f"`{d}`" for d in sorted(dsts)) or "(nothing)")
        for src, dsts in sorted(arrows.items())
    ]


if __name__ == "__main__":
    print("\n".join(arrow_lines(room_arrows())))
    print("\ninside training:")
    print("\n".join(arrow_lines(package_arrows("internvqa_jax.training"))))
