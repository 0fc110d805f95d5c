"""Every import points down (STYLE.md): the core imports nothing else of ours; the wings import the
core and themselves; only the roof (edge/*.py outside edge/core) wires them together.

Parsed with `ast` from the source, so a wrong direction fails here before it becomes a cycle. A
function-level import is allowed only for a deliberately lazy heavy module, and says why in a
comment on its line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge", "drivers", "cloud_sync", "ems", "simulator")

# What each layer may import of ours (module-name prefixes).
ALLOWED: dict[str, tuple[str, ...]] = {
    "edge.core": ("edge.core",),
    "drivers": ("edge.core", "drivers"),
    "cloud_sync": ("edge.core", "cloud_sync"),
    "ems": ("edge.core", "ems"),
    # the bench drives the controller against the virtual school's physics (room heat balance,
    # AC units, timetable): the simulator's pure, clock-free model, nothing of its servers
    "ems.bench": ("edge.core", "ems", "simulator.physics", "simulator.timetable"),
    # the virtual school serves devices from the same profiles: the profile codec and the
    # Waveshare pulse frame are the Modbus driver's public data layer, nothing else of it;
    # its card readers send the bytes the RFID driver's own encoders make
    "simulator": ("edge.core", "simulator", "drivers.modbus.profile", "drivers.modbus.pulse",
                  "drivers.rfid.framing"),
    "edge": PACKAGES,   # the roof
}


def layer(module: str) -> str:
    for special in ("edge.core", "ems.bench"):
        if module == special or module.startswith(special + "."):
            return special
    return module.split(".", maxsplit=1)[0]


def modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            out.append((".".join(p for p in rel.parts if p != "__init__"), path))
    return out


def ours(name: str) -> bool:
    return name.split(".", maxsplit=1)[0] in PACKAGES


def imports(tree: ast.AST) -> list[tuple[str, ast.stmt]]:
    found: list[tuple[str, ast.stmt]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node))
    return found


def test_every_import_points_down() -> None:
    wrong = []
    for mod, path in modules():
        may = ALLOWED[layer(mod)]
        for name, node in imports(ast.parse(path.read_text(encoding="utf-8"))):
            if ours(name) and not any(name == p or name.startswith(p + ".") for p in may):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {mod} imports {name}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_function_level_imports_are_deliberately_lazy() -> None:
    bad = []
    for _mod, path in modules():
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        tree = ast.parse(text)
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom) and "#" not in lines[node.lineno - 1]:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "function-level imports without a comment saying why they are lazy:\n" + "\n".join(sorted(set(bad)))


def test_the_layer_test_bites() -> None:
    """The checker itself: a core module importing a driver is reported."""
    tree = ast.parse("from drivers.modbus.engine import ModbusEngine\n")
    names = [n for n, _ in imports(tree)]
    assert names == ["drivers.modbus.engine"]
    assert not any(n.startswith(p) for n in names for p in ALLOWED["edge.core"])


def test_the_daemon_loads_no_heavy_library() -> None:
    """The daemon stays within its 60 MB on a Pi: what it imports (the roof, the cloud link, the energy
    manager, the CLI) never pulls in the offline tools' numpy/scipy/scikit-learn/matplotlib, nor the
    signing side's cryptography and PyJWT (~12 MB: commands are verified with PyNaCl)."""
    import subprocess
    import sys

    heavy = ("cryptography", "jwt", "numpy", "scipy", "sklearn", "matplotlib", "tqdm")
    code = ("import sys, edge.cli, edge.daemon, edge.energy, cloud_sync.service, cloud_sync.keys;"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"the daemon imports {out.stdout.strip()}"
