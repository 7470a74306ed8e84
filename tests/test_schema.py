"""The schema is the one source of keys, types, defaults and ranges; nothing else lists keys."""

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose
from dropsample import config, schema
from dropsample.cli import preflight
from dropsample.errors import ConfigError, UserError

GROUP_CLASSES = {"model": schema.ModelConfig, "data": schema.DataConfig, "dropout": schema.DropoutConfig,
                 "train": schema.TrainConfig, "gen": schema.GenConfig}


@pytest.mark.parametrize("group", sorted(GROUP_CLASSES))
def test_every_preset_key_exists_in_the_schema(group):
    presets = sorted((config.conf_dir() / group).glob("*.yaml"))
    assert presets
    for path in presets:
        raw = OmegaConf.to_container(OmegaConf.load(path))
        raw.pop("defaults", None)
        config.typed(raw, GROUP_CLASSES[group], f"{group}.")  # unknown keys and wrong types raise


def test_every_sampler_preset_is_valid_settings():
    for name in config.options("sampler"):
        config.sampler_settings(config.sampler_preset(name))


def test_the_default_presets_equal_the_schema_defaults():
    """conf/*/default.yaml and the root config are presets *of* the schema's defaults: they must agree."""
    cfg = compose([])
    defaults = schema.Config()
    for group in ("train", "gen"):
        assert getattr(cfg, group) == getattr(defaults, group), group
    assert (cfg.seed, cfg.samplers, cfg.sample_after_train) == (defaults.seed, defaults.samplers,
                                                                 defaults.sample_after_train)


def test_every_key_has_a_documented_default():
    readme = (REPO / "README.md").read_text()
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```\w*", "", readme))  # inline code, fences dropped
    undocumented = []
    for key, default, help_text in schema.describe():
        assert help_text, f"{key} has no help text in schema.py"
        leaf = key.rsplit(".", 1)[-1]
        if not any(re.match(rf"{re.escape(leaf)}\b", span) or re.search(rf"(^|[\s.\[]){re.escape(key)}\b", span)
                   for span in spans):
            undocumented.append(key)
    assert not undocumented, f"README's configuration reference does not mention {undocumented}"
    for key, _, _ in schema.describe(schema.SamplerSettings):
        assert f"`{key}`" in readme, f"README does not mention the sampler setting {key}"


def test_round_trip_through_a_run_folder_config():
    cfg = compose(["model=tiny", "dropout.rate=0.2", "samplers=[greedy,{base:top_p_0.9,temperature:0.7}]"])
    again = config.validate(OmegaConf.create(schema.to_dict(cfg)))
    assert again == cfg
    assert schema.config_hash(again) == schema.config_hash(cfg)


def test_result_identity_ignores_names_places_and_device_only():
    base = compose(["model=tiny"])
    same = compose(["model=tiny", "name=other", "gen.name=mine", "train.device=cpu", "runs_root=elsewhere",
                    "train.log_interval=7", "data.cache_dir=/tmp/x", "experiment_name=e", "gen.batch_size=3"])
    assert schema.config_hash(same) == schema.config_hash(base)
    for change in ("seed=1", "data.path=/tmp/other.txt", "dropout.rate=0.2", "gen.num_samples=7"):
        assert schema.config_hash(compose(["model=tiny", change])) != schema.config_hash(base), change
    # the report groups seeds together with the same definition
    assert schema.config_hash(compose(["model=tiny", "seed=1"]), seed=False) == schema.config_hash(base, seed=False)


@pytest.mark.parametrize("override,message", [
    ("seed=abc", "seed: got 'abc'; must be an integer"),
    ("seed=1.5", "seed: got '1.5'; must be an integer"),
    ("sample_after_train=no", "sample_after_train: got 'no'; use true or false"),
    ("train.compile=2", "train.compile: got 2; use true or false"),
    ("dropout.drop_path_by_depth=yes", "dropout.drop_path_by_depth: got 'yes'; use true or false"),
    ("train.lr=fast", "train.lr: got 'fast'; must be a number"),
    ("dropout.sites=embd", "dropout.sites: must be a list"),
    ("+gen.temperature=0.7", "gen.temperature: unknown key; gen takes num_samples"),
    ("+dropout.schedule.speed=2", "dropout.schedule.speed: unknown key; dropout.schedule takes kind"),
    ("train.min_lr=0.01", "train.min_lr: got 0.01; must be in [0, train.lr=0.001]"),
])
def test_wrong_types_and_values_fail_before_any_work(override, message):
    with pytest.raises(UserError) as err:
        preflight(["model=tiny", override], multirun=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as err:
        config.validate({"model": {"n_layer": 0}})
    assert err.value.key == "model.n_layer"


def _imports(path: Path, modules=()) -> list[tuple[str, bool]]:
    """(imported dropsample module, imported inside a function?) for one source file.
    `from pkg import sub` depends on the submodule `pkg.sub` when there is one, else on `pkg`."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dropsample"):
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [m for m in subs if m in modules] or [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("dropsample")]
        out += [(n, id(node) not in top) for n in names]
    return out


def test_no_import_cycles_and_lazy_imports_only_where_they_save_torch():
    src = REPO / "src" / "dropsample"
    modules = {".".join(p.relative_to(src.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in src.rglob("*.py")}
    graph = {}
    lazy = set()
    for name, path in modules.items():
        deps = set()
        for imported, in_function in _imports(path, modules):
            target = imported
            if target in modules and target != name:
                deps.add(target)
                if in_function:
                    lazy.add((name, target))
        graph[name] = deps
    # function-level imports of our own modules: only the CLI's command dispatch and torch-free status
    assert {n for n, _ in lazy} <= {"dropsample.cli", "dropsample.runs"}, sorted(lazy)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in graph[node]:
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [node, dep]))
            if dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [])


def test_schema_module_is_a_leaf():
    deps = {m for m, _ in _imports(REPO / "src" / "dropsample" / "schema.py")}
    assert deps <= {"dropsample.errors", "dropsample.errors.ConfigError"}, deps


def test_keys_are_not_listed_outside_the_schema():
    """No module spells a group's keys as a tuple of strings (the drift issue 10 found)."""
    offenders = []
    for path in (REPO / "src" / "dropsample").rglob("*.py"):
        if path.name == "schema.py":
            continue
        for tup in re.findall(r"\(([^()]*)\)", path.read_text()):
            words = set(re.findall(r'"(\w+)"', tup))
            for cls in (schema.TrainConfig, schema.GenConfig, schema.SamplerSettings, schema.ModelConfig):
                keys = {f.name for f in fields(cls)}
                if len(words & keys) >= 4 and len(words & keys) >= 0.8 * len(words):
                    offenders.append((path.name, cls.__name__, sorted(words & keys)))
    assert not offenders, offenders
