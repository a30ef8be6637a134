"""dvc.yaml's source deps are what each stage's command imports, so no code edit leaves a stage stale.

The import graph comes from scripts/stage_deps.py; `dvc status` in a temporary copy of the
project is the judge of what DVC really marks.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

spec = importlib.util.spec_from_file_location("stage_deps", REPO_ROOT / "scripts" / "stage_deps.py")
stage_deps = sys.modules["stage_deps"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(stage_deps)

EDITED = "\n# edited by tests/test_stage_deps.py\n"


def test_dvc_yaml_lists_the_generated_source_deps():
    written = stage_deps.written_sources()
    for name, sources in stage_deps.stage_sources().items():
        assert written[name] == sources.template, f"{name}: run python scripts/stage_deps.py --write"


def source_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for folder in ("src", "stages") for p in (root / folder).rglob("*.py"))


def test_the_product_imports_nothing_from_the_training_recipe():
    """The recipe (recipes/embedded, `embedded_recipe`) builds on the product, never the reverse: a
    stage that imported it would run files that its deps (src/ and stages/) do not list."""
    found = []
    for name in source_files(REPO_ROOT):
        for node in ast.walk(ast.parse((REPO_ROOT / name).read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            found += [f"{name}:{node.lineno}" for m in modules if m.split(".")[0] == "embedded_recipe"]
    assert not found, f"the product imports the recipe at {', '.join(found)}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The working tree as git sees it, with placeholder outputs committed to a fresh dvc.lock."""
    root = tmp_path_factory.mktemp("deps_project")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO_ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)  # the committed lock may predate this tree's deps
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    cwd = Path.cwd()
    os.chdir(root)  # DVC's run cache resolves stage paths against the working directory
    try:
        from dvc.repo import Repo

        repo = Repo(str(root))
        for stage in repo.index.stages:
            for out in stage.outs:
                path = Path(out.fs_path)
                if path.suffix:  # a file output (metrics, plots)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}\n")
                else:
                    path.mkdir(parents=True, exist_ok=True)
                    (path / "placeholder").write_text("x\n")
        repo.commit(force=True)
        assert Repo(str(root)).status() == {"cpu": ["always changed"]}  # it reads the CPU on every run
        yield root
    finally:
        os.chdir(cwd)


def changed_sources(root: Path, edits: list[str]) -> dict[str, set[str]]:
    """Stage -> the edited files `dvc status` reports as its changed deps."""
    from dvc.repo import Repo

    originals = {name: (root / name).read_bytes() for name in edits}
    try:
        for name in edits:
            (root / name).write_bytes(originals[name] + EDITED.encode())
        status = Repo(str(root)).status()
    finally:
        for name, content in originals.items():
            (root / name).write_bytes(content)
    changed = {}
    for stage, entries in status.items():
        deps = {path for entry in entries if isinstance(entry, dict) for path in entry.get("changed deps", {})}
        if deps:  # not only "always changed" (the cpu stage)
            changed[stage] = deps
    return changed


def test_editing_any_module_marks_every_stage_that_imports_it(project):
    # DVC judges each dep file on its own, so editing every file at once and reading each stage's
    # changed deps is the same as editing one file at a time, at one `dvc status` instead of ~60.
    files = source_files(project)
    changed = changed_sources(project, files)
    sources = stage_deps.stage_sources(project)
    graph = stage_deps.ImportGraph(project)
    backends = stage_deps.backend_modules(graph)
    backend_imports = {b: {graph.relative(m) for m in graph.closure({module})} for b, module in backends.items()}
    variants = yaml.safe_load((project / "params.yaml").read_text())["variants"]
    for family in sources.values():
        for stage, expected in family.expected.items():
            marked = changed.get(stage, set())
            assert expected <= marked, f"{stage} goes stale when {sorted(expected - marked)} change"
            extra = marked - expected
            if "@" in stage:  # one deps list per foreach: what other backends import, never their files
                own = variants[stage.split("@")[1]]["backend"]
                others = set().union(*(v for b, v in backend_imports.items() if b != own))
                assert extra <= others - {graph.relative(m) for m in backends.values()}, (stage, sorted(extra))
            else:
                assert not extra, f"{stage} reruns for {sorted(extra)}, which its command does not import"
    assert set(changed) == {s for family in sources.values() for s in family.expected}  # every stage ran code


def test_editing_one_backend_marks_only_its_variants(project):
    variants = yaml.safe_load((project / "params.yaml").read_text())["variants"]
    ort = {key for key, entry in variants.items() if entry["backend"] == "ort"}
    assert ort, "params.yaml has no ort variant to check"
    budgets = yaml.safe_load((project / "params.yaml").read_text()).get("accuracy") or {}
    changed = changed_sources(project, ["src/nemo_ptq/backends/ort.py"])
    # the accuracy stages iterate over `accuracy`, whose items name no backend: they list every backend file
    assert set(changed) == {f"{stage}@{key}" for stage in ("calibrate", "quantize", "evaluate") for key in ort} | {
        f"{stage}@{key}" for stage in ("sensitivity", "search", "evaluate-budget") for key in budgets}


def write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))


def test_import_graph_follows_lazy_relative_and_submodule_imports(tmp_path):
    write_package(tmp_path, {
        "src/nemo_ptq/__init__.py": "",
        "src/nemo_ptq/errors.py": "",
        "src/nemo_ptq/unused.py": "",
        "src/nemo_ptq/models/__init__.py": "",
        "src/nemo_ptq/models/export.py": "from ..errors import X\n",
        "src/nemo_ptq/models/fused.py": "def f():\n    from . import export\n",
        "src/nemo_ptq/top.py": "import os\nfrom nemo_ptq.models import fused\n",
    })
    graph = stage_deps.ImportGraph(tmp_path)
    assert graph.closure({"nemo_ptq.top"}) == {
        "nemo_ptq", "nemo_ptq.top", "nemo_ptq.models", "nemo_ptq.models.fused", "nemo_ptq.models.export",
        "nemo_ptq.errors"}


def test_an_unknown_import_by_name_is_an_error(tmp_path):
    write_package(tmp_path, {
        "src/nemo_ptq/__init__.py": "",
        "src/nemo_ptq/plugins.py": "import importlib\n\ndef load(n):\n    return importlib.import_module(n)\n",
    })
    with pytest.raises(SystemExit, match=r"plugins.py:4: an import by name"):
        stage_deps.ImportGraph(tmp_path).closure({"nemo_ptq.plugins"})


def minimal_project(root: Path, ort_source: str) -> None:
    write_package(root, {
        "src/nemo_ptq/__init__.py": "",
        "src/nemo_ptq/backends/__init__.py": """\
            import importlib
            SUPPORT_MODULES = frozenset({"base"})
            def get(name):
                return importlib.import_module(f"{__name__}.{name}")
            """,
        "src/nemo_ptq/backends/base.py": "",
        "src/nemo_ptq/backends/eager.py": "from nemo_ptq.backends import base\n",
        "src/nemo_ptq/backends/ort.py": ort_source,
        "stages/quantize.py": "from nemo_ptq.backends import get\n",
        "params.yaml": "variants:\n  a: {backend: eager}\n  b: {backend: ort}\n",
        "dvc.yaml": """\
            stages:
              quantize:
                foreach: ${variants}
                do:
                  cmd: python stages/quantize.py --variant ${key}
                  deps:
                    - stages/quantize.py
                    - data/in
            """,
    })


def test_per_variant_stages_list_their_backend_file_and_what_backends_share(tmp_path):
    minimal_project(tmp_path, "from nemo_ptq.backends import base\n")
    [sources] = stage_deps.stage_sources(tmp_path).values()
    assert sources.template == [
        "stages/quantize.py", "src/nemo_ptq/__init__.py", "src/nemo_ptq/backends/__init__.py",
        "src/nemo_ptq/backends/base.py", stage_deps.BACKEND_TEMPLATE]
    assert sources.expected["quantize@b"] == {*sources.template[:-1], "src/nemo_ptq/backends/ort.py"}
    rewritten = stage_deps.rewrite((tmp_path / "dvc.yaml").read_text(), {"quantize": sources})
    deps = yaml.safe_load(rewritten)["stages"]["quantize"]["do"]["deps"]
    assert deps == [*sources.template, "data/in"]  # data deps kept, after the sources


def test_a_backend_importing_another_backend_is_an_error(tmp_path):
    minimal_project(tmp_path, "from nemo_ptq.backends import eager\n")
    with pytest.raises(SystemExit, match="backend ort imports src/nemo_ptq/backends/eager.py"):
        stage_deps.stage_sources(tmp_path)
