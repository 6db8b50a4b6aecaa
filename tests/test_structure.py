"""The code's shape: every Config field is a flag and every flag a field, each option list once, and imports
pointing one way (launch.py -> engine -> datasets, models) without cycles."""

import ast
import dataclasses
import os

import pytest

from engine import config as config_module
from engine import tasks
from engine.config import Config, FlagError
from tests.conftest import REPO

PACKAGES = ("engine", "datasets", "models")


def test_config_fields_and_launch_flags_match_one_to_one():
    import launch

    defined = {flag.name: flag for flag in launch.FLAGS.flags_by_module_dict()[launch.__name__]}
    fields = {field.name: field for field in dataclasses.fields(Config)}
    assert defined.keys() == fields.keys()
    defaults = Config()
    for name, flag in defined.items():
        assert flag.default == getattr(defaults, name), name
        if name in config_module.CHOICES:
            assert list(flag.parser.enum_values) == list(config_module.CHOICES[name]), name


def test_every_task_name_has_its_task():
    assert tuple(tasks.TASKS) == config_module.TASKS
    assert all(task.name == name for name, task in tasks.TASKS.items())


@pytest.mark.parametrize("flags, message", [
    ({"mode": "fly"}, "--mode=fly is unknown; choose one of train, eval"),
    ({"task": "captioning"}, "--task=captioning is unknown"),
    ({"cache": "ram"}, "--cache=ram is not one of none | memory | disk:PATH"),
    ({"mask_dirs": ["a"]}, "--mask_dirs=a must name two folders"),
    ({"profile_steps": "5,2"}, "--profile_steps=5,2 needs 1 <= START <= STOP"),
    ({"profile_steps": "x"}, "--profile_steps=x must be two step numbers"),
])
def test_bad_flag_values_are_refused_when_the_config_is_made(flags, message):
    with pytest.raises(FlagError, match=message):
        Config(**flags)


def test_a_config_is_never_changed_once_made():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = "resnet"  # type: ignore[misc]
    filled = tasks.TASKS["detection"].with_defaults(Config(task="detection"))
    assert (filled.model, filled.learning_rate, filled.mosaic, filled.image_size) == ("yolov8_n", 2e-3, 0.5, None)
    assert Config(task="detection").model is None


def _modules() -> dict[str, str]:
    """{dotted module name: path} of launch.py and every module of the three packages."""
    found = {"launch": os.path.join(REPO, "launch.py")}
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    dotted = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The project modules that the module at `path` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in modules else node.module)
    return found


def test_imports_point_one_way_without_cycles():
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    for name, imported in graph.items():
        layer = name.split(".")[0]
        allowed = {"launch": {"engine", "datasets"}, "engine": {"engine", "datasets", "models"},
                   "datasets": {"datasets"}, "models": {"models"}}[layer]
        assert {target.split(".")[0] for target in imported} <= allowed, (name, imported)
    visiting, done = [], set()

    def visit(name):
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join(visiting[visiting.index(name):] + [name])
        visiting.append(name)
        for target in graph[name]:
            visit(target)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)
