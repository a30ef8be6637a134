"""The source files each DVC stage really runs, found from its imports; keeps dvc.yaml's deps true.

    python scripts/stage_deps.py           # print what differs from dvc.yaml (exit 1 if anything)
    python scripts/stage_deps.py --write   # rewrite the src/ and stages/ deps in dvc.yaml

A stage runs the script named in its `cmd` and every `nemo_ptq` module that script imports,
transitively: module-level and function-level imports alike (the code imports lazily inside
functions), plus each package's `__init__.py` on the way. Imports are read from the source (ast),
not from `sys.modules` after importing a stage: a lazy import only runs when its function is
called, which takes the stage's real inputs, so importing would miss most of them.

The one import by name, the backend registry's `importlib.import_module`, loads the backend of
the variant that the command names (`--variant <key>`), so a per-variant stage depends on
`backends/${item.backend}.py` and on what any backend imports besides backend files: a `foreach`
stage has one deps list for all its variants, so e.g. eager variants also list models/export.py,
which only the export-based backends import. A stage that iterates over another section keyed by
variant (`foreach: ${accuracy}`) has no `${item.backend}`, so it lists every backend file. A backend must not import another backend's file,
or editing that file would mark both backends' variants.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "nemo_ptq"
REGISTRY = "nemo_ptq.backends"  # imports backend modules by name: see module doc
BACKEND_TEMPLATE = "src/nemo_ptq/backends/${item.backend}.py"
SOURCE_PREFIXES = ("src/", "stages/")
OVER_VARIANTS = "${variants}"  # per-variant stages; others iterate a section keyed by variant (accuracy)  # the deps this script owns; data deps are written by hand


class ImportGraph:
    """`nemo_ptq` modules under <root>/src and the `nemo_ptq` modules each one imports."""

    def __init__(self, root: Path = ROOT):
        self.root = Path(root)
        self.files: dict[str, Path] = {}
        for path in sorted((self.root / "src" / PACKAGE).rglob("*.py")):
            parts = path.relative_to(self.root / "src").with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.files[name] = path
        self._imports: dict[str, set[str]] = {}

    def relative(self, module: str) -> str:
        return self.files[module].relative_to(self.root).as_posix()

    def imports_of_file(self, path: Path, module: str | None = None) -> set[str]:
        """Modules that `path` imports, with the packages that importing them runs."""
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found |= self._with_parents(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = self._absolute(node, module, is_package)
                if base is None:
                    continue
                found |= self._with_parents(base)
                for alias in node.names:  # `from nemo_ptq.models import export` imports a module
                    found |= self._with_parents(f"{base}.{alias.name}")
            elif isinstance(node, ast.Call) and _is_dynamic_import(node) and module != REGISTRY:
                where = path.relative_to(self.root).as_posix()
                raise SystemExit(f"{where}:{node.lineno}: an import by name that scripts/stage_deps.py cannot "
                                 "resolve; import the module by name or teach stage_deps.py what it loads")
        return found

    def imports(self, module: str) -> set[str]:
        if module not in self._imports:
            self._imports[module] = self.imports_of_file(self.files[module], module)
        return self._imports[module]

    def closure(self, start: set[str]) -> set[str]:
        seen: set[str] = set()
        todo = [m for m in start if m in self.files]
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(self.imports(module) - seen)
        return seen

    def _with_parents(self, name: str) -> set[str]:
        parts = name.split(".")
        return {m for m in (".".join(parts[: i + 1]) for i in range(len(parts))) if m in self.files}

    @staticmethod
    def _absolute(node: ast.ImportFrom, module: str | None, is_package: bool) -> str | None:
        if node.level == 0:
            return node.module
        if module is None:
            return None
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in {"import_module", "__import__"}


@dataclass(frozen=True)
class StageSources:
    """The source deps of one dvc.yaml stage: as written there (template) and per resolved stage."""

    template: list[str]  # what dvc.yaml lists, `${item.backend}` unexpanded
    expected: dict[str, set[str]]  # resolved stage name -> files its command really imports


def backend_modules(graph: ImportGraph) -> dict[str, str]:
    """Backend name -> module, as the registry finds them (backends/*.py but its support modules)."""
    registry = ast.parse(graph.files[REGISTRY].read_text())
    support: set[str] = set()
    for node in ast.walk(registry):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUPPORT_MODULES" for t in node.targets):
            support = {c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant)}
    prefix = REGISTRY + "."
    return {m[len(prefix):]: m for m in graph.files if m.startswith(prefix) and m[len(prefix):] not in support}


def stage_sources(root: Path = ROOT) -> dict[str, StageSources]:
    """For each stage in <root>/dvc.yaml: the source deps it must list."""
    graph = ImportGraph(root)
    backends = backend_modules(graph)
    backend_files = {graph.relative(m) for m in backends.values()}
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    variants = yaml.safe_load((root / "params.yaml").read_text()).get("variants") or {}
    result = {}
    for name, stage in pipeline.items():
        body = stage.get("do", stage)
        script = _script(name, body["cmd"])
        base = {script} | {graph.relative(m) for m in graph.closure(graph.imports_of_file(root / script))}
        per_variant = "--variant ${key}" in " ".join(body["cmd"].split()) and "foreach" in stage
        if not per_variant:
            result[name] = StageSources([script, *sorted(base - {script})], {name: base})
            continue
        loads_backend = REGISTRY in graph.closure(graph.imports_of_file(root / script))
        with_backend = {}
        for backend, module in backends.items():
            files = {graph.relative(m) for m in graph.closure({module})} if loads_backend else set()
            others = (files & backend_files) - {graph.relative(module)}
            if others:
                raise SystemExit(f"backend {backend} imports {', '.join(sorted(others))}: move what backends share "
                                 "into a support module (backends/__init__.py SUPPORT_MODULES)")
            with_backend[backend] = base | files
        shared = set().union(*with_backend.values()) - backend_files
        if stage["foreach"] == OVER_VARIANTS:
            template = [script, *sorted(shared - {script})] + ([BACKEND_TEMPLATE] if loads_backend else [])
        else:  # foreach over a section keyed by variant (accuracy): its items name no backend, so all of them
            template = [script, *sorted((shared | (backend_files if loads_backend else set())) - {script})]
        items = variants if stage["foreach"] == OVER_VARIANTS else (_section(root, stage["foreach"]) or {})
        expected = {}
        for key in items:
            entry = variants.get(key)
            backend = entry.get("backend") if isinstance(entry, dict) else None
            if backend not in with_backend:
                raise SystemExit(f"variants.{key}: unknown backend {backend!r}; choose one of: {', '.join(backends)}")
            expected[f"{name}@{key}"] = with_backend[backend] if stage["foreach"] == OVER_VARIANTS else set(template)
        result[name] = StageSources(template, expected)
    return result


def _section(root: Path, foreach: str) -> dict:
    """The params.yaml section that a `foreach: ${section}` iterates over."""
    match = re.fullmatch(r"\$\{(\w+)\}", foreach)
    if match is None:
        raise SystemExit(f"foreach {foreach!r}: iterate over one params.yaml section, as ${{variants}}")
    return yaml.safe_load((root / "params.yaml").read_text()).get(match.group(1))


def _script(stage: str, cmd: str) -> str:
    found = re.findall(r"\bpython\s+(stages/\S+\.py)", cmd)
    if len(found) != 1:
        raise SystemExit(f"stage {stage}: its cmd must run one stages/*.py script, found {found or 'none'}")
    return found[0]


def written_sources(root: Path = ROOT) -> dict[str, list[str]]:
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: [d for d in stage.get("do", stage).get("deps", []) if d.startswith(SOURCE_PREFIXES)]
            for name, stage in pipeline.items()}


def rewrite(text: str, sources: dict[str, StageSources]) -> str:
    """dvc.yaml with each stage's src/ and stages/ deps replaced, data deps and comments kept."""
    out, stage, in_deps, indent = [], None, False, ""
    for line in text.splitlines(keepends=True):
        header = re.match(r"^  ([\w@-]+):\s*$", line)
        if header:
            stage, in_deps = header.group(1), False
        item = re.match(r"^(\s*)- (\S+)\s*$", line)
        if in_deps and item and item.group(1) == indent:
            if item.group(2).startswith(SOURCE_PREFIXES):
                continue  # written anew above
        elif in_deps and not (item and item.group(1) == indent):
            in_deps = False
        deps = re.match(r"^(\s*)deps:\s*$", line)
        out.append(line)
        if deps and stage in sources:
            in_deps, indent = True, deps.group(1) + "  "
            out.extend(f"{indent}- {path}\n" for path in sources[stage].template)
    return "".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml instead of reporting")
    args = parser.parse_args()
    sources = stage_sources()
    written = written_sources()
    stale = {name: s.template for name, s in sources.items() if written.get(name) != s.template}
    if args.write and stale:
        (ROOT / "dvc.yaml").write_text(rewrite((ROOT / "dvc.yaml").read_text(), sources))
        print(f"rewrote the source deps of {', '.join(stale)} in dvc.yaml; refresh dvc.lock with dvc repro")
        return 0
    for name, template in stale.items():
        have = set(written.get(name, []))
        print(f"{name}: missing {sorted(set(template) - have) or '-'}; not imported {sorted(have - set(template)) or '-'}")
    if stale:
        print("run: python scripts/stage_deps.py --write", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
