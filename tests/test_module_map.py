"""docs/architecture.md's module map matches the imports in the code, and imports run one way."""

import re

from module_map import ROOT, arrow_lines, module_arrows, package_arrows, room_arrows


def _map_section() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert text.startswith("# Architecture"), "docs/architecture.md must open with its title"
    start = text.index("\n## ") + 1
    assert text.startswith("## Module map", start), "the module map must be the first section"
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _layers(section: str) -> dict[str, int]:
    """{room: layer} from the "- layer N: `a`, `b` (words)" lines."""
    layers = {}
    for number, rest in re.findall(r"^- layer (\d+): (.*)$", section, re.M):
        for name in re.findall(r"`([\w.]+)`", rest.split("(")[0]):
            assert name not in layers, f"{name} is listed in two layers"
            layers[name] = int(number)
    return layers


def _arrow_block(section: str, heading: str) -> list[str]:
    block = section[section.index(heading) :].split("\n\n")[0]  # the heading line, then the list
    return [line for line in block.splitlines() if line.startswith("- ")]


def test_every_room_has_a_layer_and_imports_only_lower_layers():
    layers = _layers(_map_section())
    arrows = room_arrows()
    assert set(layers) == set(arrows), f"rooms in the code {sorted(arrows)} vs in the map {sorted(layers)}"
    upward = [(src, dst) for src, dsts in arrows.items() for dst in dsts if layers[dst] >= layers[src]]
    assert not upward, f"imports that do not run down a layer: {upward}"


def test_the_listed_arrows_are_the_code_arrows():
    section = _map_section()
    assert _arrow_block(section, "Arrows (room") == arrow_lines(room_arrows())
    assert _arrow_block(section, "Arrows inside `training`") == arrow_lines(package_arrows("internvqa_jax.training"))


def _cycle(arrows: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph `arrows` (module -> modules it imports), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(arrows.get(module, ())):
            found = visit(target, path + [module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(arrows):
        found = visit(module, [])
        if found:
            return found
    return None


def test_no_import_cycle_between_any_modules():
    # Every module of the project, inside packages too (imports inside functions count).
    cycle = _cycle(module_arrows())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
