"""The package's shape: each verb lives in the module named like it, and no module imports,
directly or through others, one that imports it back."""

import ast
import importlib
from pathlib import Path

from futureseg import cli

PACKAGE = Path(cli.__file__).parent


def test_each_verb_lives_in_the_module_named_like_it():
    for name in cli.VERB_MODULES:
        assert importlib.import_module(f"futureseg.{name}").VERB.replace("-", "_") == name.split(".")[-1]


def test_verbs_live_in_the_stage_packages_and_the_core_holds_none():
    stages = [name.split(".")[0] for name in cli.VERB_MODULES]
    assert list(dict.fromkeys(stages)) == ["data", "predict", "segment", "forecast", "evaluate"]
    core = {p.stem for p in (PACKAGE / "core").glob("*.py")} - {"__init__"}
    assert core == {"data", "classes", "io", "errors", "training", "dense", "instances", "shards", "motion", "flags"}
    assert not any(hasattr(importlib.import_module(f"futureseg.core.{m}"), "VERB") for m in core)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The futureseg modules `path` imports anywhere in it (functions' lazy imports too)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found - {here}


def test_the_import_graph_has_no_cycle():
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, set(paths)) for name, path in paths.items()}
    # a package importing its own submodules (a registry) is no cycle: drop parent→child edges
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in graph.items()}
    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import cycle: " + " -> ".join(trail + [name])
        state[name] = "open"
        for dep in sorted(graph[name]):
            visit(dep, trail + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


def test_stages_stand_on_the_core_and_models_only():
    """core/ and models/ import no verb; a verb imports no verb of another stage (what two
    stages share lives in core/: the frame caches' and mean/std's readers, the classes)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    verbs = {f"futureseg.{name}" for name in cli.VERB_MODULES}
    for name, path in paths.items():
        for dep in imports_of(path, set(paths)) & verbs:
            if name.startswith(("futureseg.core", "futureseg.models")):
                raise AssertionError(f"{name} (a floor) imports the verb {dep}")
            assert dep.split(".")[1] == name.split(".")[1], f"{name} imports {dep}, a verb of another stage"
        # nor the command above them all: the flags the verbs share live in core/flags.py
        assert name == "futureseg.__main__" or "futureseg.cli" not in imports_of(path, set(paths)), \
            f"{name} imports futureseg.cli, the command; take the shared flags from futureseg.core.flags"


def test_a_verb_imports_only_its_own_module():
    """`futureseg VERB` builds VERB's parser alone: a Snakemake job does not pay for the other
    verbs' imports (torch alone takes ~2 s to import, at every job's start)."""
    import subprocess
    import sys

    script = (
        "import sys; from futureseg import cli; cli.build_parser(sys.argv[1:]); "
        "print(sorted(n for n in cli.VERB_MODULES if 'futureseg.' + n in sys.modules), 'torch' in sys.modules)"
    )
    for name, needs_torch in (("data.mean_std", False), ("evaluate.gather_shards", False),
                              ("forecast.train_dynamics", True)):
        verb = cli.verb_name(name)
        out = subprocess.run([sys.executable, "-c", script, verb, "--help"], capture_output=True, text=True,
                             check=True).stdout.split()
        assert out == [f"['{name}']", str(needs_torch)], (verb, out)
    # no verb named: every verb's parser, for `futureseg --help`
    assert len(cli.build_parser()._subparsers._group_actions[0].choices) == len(cli.VERB_MODULES)


def test_the_data_and_motion_verbs_run_without_torch(tiny_dataset, tmp_path):
    """The verbs of the data and of route motion never import torch (seconds at every job's
    start): each runs here with torch made unimportable."""
    import subprocess
    import sys

    script = "import sys; sys.modules['torch'] = None; from futureseg import cli; sys.exit(cli.main(sys.argv[1:]))"
    frames = tmp_path / "val.npy"
    runs = [
        ["mean-std", "--root", tiny_dataset, "--out", tmp_path / "mean_std.json", "--splits", "train"],
        ["cache-frames", "--root", tiny_dataset, "--split", "val", "--out", frames],
        ["extrapolate", "--root", tiny_dataset, "--split", "val", "--frames", frames, "--out", tmp_path / "m.npy"],
        ["tracks", "--root", tiny_dataset, "--split", "val", "--frames", frames, "--out", tmp_path / "t.npz"],
    ]
    for argv in runs:
        result = subprocess.run([sys.executable, "-c", script, *map(str, argv)], capture_output=True, text=True)
        assert result.returncode == 0, f"futureseg {argv[0]}: {result.stderr[-2000:]}"
    assert (tmp_path / "m.npy").exists() and (tmp_path / "t.npz").exists()
