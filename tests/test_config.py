"""Config validation: every YAML in configs/ parses; broken files give one readable line each."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reinflow.config import ExperimentConfig, load_config
from reinflow.config.errors import ConfigError
from reinflow.config.overrides import parse_override

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "math_agent.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_in_the_repo_parses(path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.experiment == path.stem


def test_math_agent_is_sized_for_a_gpu_and_its_documented_cpu_command_parses():
    path = ROOT / "configs" / "math_agent.yaml"
    gpu = load_config(path)
    assert (gpu.rollout.engine, gpu.model.dtype, gpu.model.path) == ("vllm", "bfloat16", "Qwen/Qwen2.5-1.5B-Instruct")
    header = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(header) if line.startswith("reinflow train"))
    command = " ".join(line.rstrip("\\").strip() for line in header[start : start + 2]).split()
    overrides = [word for word in command if "=" in word]
    cpu = load_config(path, overrides)
    assert (cpu.rollout.engine, cpu.model.dtype, cpu.model.path) == ("hf", "float32", "builtin:smollm2-135m-instruct")


def _write(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    mutate(raw)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _set(dotted: str, value):
    def mutate(raw):
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def _rename(dotted: str, new_key: str):
    def mutate(raw):
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[new_key] = node.pop(last)

    return mutate


BROKEN = [
    # (mutation, expected fragments of the single error line)
    (_rename("rollout.group_size", "grup_size"), ["rollout.grup_size", "unknown key", "did you mean 'group_size'"]),
    (_rename("train.lr", "learning_rate"), ["train.learning_rate", "unknown key"]),
    (_rename("data.source.sizes", "size"), ["data.source.size", "did you mean 'sizes'"]),
    (_rename("model", "modle"), ["modle", "did you mean 'model'"]),
    (_set("train.lr", "fast"), ["train.lr", "valid number", "'fast'"]),
    (_set("train.lr", -1.0), ["train.lr", "greater than 0"]),
    (_set("rollout.group_size", 1), ["rollout.group_size", "greater than or equal to 2"]),
    (_set("rollout.top_p", 1.5), ["rollout.top_p", "less than or equal to 1"]),
    (_set("rollout.engine", "tgi"), ["rollout.engine", "'hf' or 'vllm'"]),
    (_set("backbone", "spark"), ["backbone", "'debug' or 'ray'"]),
    (_set("data.source.type", "s3"), ["data.source", "s3"]),
    (_set("model.tuning", {"type": "lora", "rank": 0}), ["model.tuning.rank", "greater than or equal to 1"]),
    (_set("model.tuning", {"type": "lora", "rnak": 8}), ["model.tuning.rnak", "did you mean 'rank'"]),
    (_set("rollout.workflow", "agents/quickstart.py"), ["rollout.workflow", "pattern"]),
    (_set("rollout.max_new_tokens_per_turn", 600), ["rollout", "max_new_tokens_per_turn (600)", "max_model_len (512)"]),
    (_set("data.eval_split", "validation"), ["data", "eval_split 'validation'", "['test', 'train']"]),
    (_set("train.workers", 2), ["train.workers is 2", "backbone 'ray'"]),
    (_set("rollout.concurrency", 2), ["rollout.concurrency (2)", "group_size (4)"]),
    (lambda raw: raw.pop("judge"), ["judge", "required key is missing"]),
    (_set("experiment", "has space"), ["experiment", "pattern"]),
    (_set("train.clip_ratio_high", 0.1), ["train", "clip_ratio_high (0.1) is below clip_ratio (0.2)", "symmetric"]),
    (_set("train.clip_ratio_high", 0.0), ["train.clip_ratio_high", "greater than 0"]),
    (_set("judge.degenerate_repeated_share", 1.5), ["judge.degenerate_repeated_share", "less than or equal to 1"]),
]


@pytest.mark.parametrize("mutate,fragments", BROKEN, ids=[b[1][0] for b in BROKEN])
def test_broken_config_gives_a_readable_error(tmp_path, mutate, fragments):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(str(path) + ":"), message
    assert "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(scalar)


def test_dotted_overrides_apply_with_types():
    config = load_config(
        ROOT / "configs" / "quickstart.yaml",
        ["train.lr=1e-6", "train.iterations=2", "model.path=builtin:tiny-random-llama", "judge.options={weight: 0.5}"],
    )
    assert config.train.lr == 1e-6
    assert config.train.iterations == 2
    assert config.model.path == "builtin:tiny-random-llama"
    assert config.judge.options == {"weight": 0.5}


def test_override_of_unknown_key_names_nearest():
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key \(did you mean 'lr'\?\)"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["train.lrr=1e-6"])


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("train.lr")
    with pytest.raises(ConfigError, match="'train.lr' is a value, not a section"):
        load_config(ROOT / "configs" / "quickstart.yaml", ["train.lr.x=1"])


def test_override_strings_that_look_like_words_stay_strings():
    assert parse_override("experiment=nan") == (["experiment"], "nan")
    assert parse_override("train.lr=3e-5") == (["train", "lr"], 3e-5)


def test_every_field_is_documented():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"

    from reinflow.config import experiment as module

    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, module.Section) and value is not module.Section:
            walk(value)


def test_fingerprint_changes_with_config():
    base = load_config(ROOT / "configs" / "quickstart.yaml")
    other = load_config(ROOT / "configs" / "quickstart.yaml", ["train.lr=1e-3"])
    assert base.fingerprint() == load_config(ROOT / "configs" / "quickstart.yaml").fingerprint()
    assert base.fingerprint() != other.fingerprint()


def test_ray_address_is_unset_by_default_and_takes_cluster_addresses_only():
    quickstart = ROOT / "configs" / "quickstart.yaml"
    assert load_config(quickstart).train.ray_address is None  # None: $RAY_ADDRESS, else a local Ray
    for address in ["auto", "10.0.0.5:6379", "head-node:6379", "ray://head-node:10001", "[fd00::5]:6379"]:
        assert load_config(quickstart, [f"train.ray_address={address}"]).train.ray_address == address
    for address in ["head-node", "http://head-node:6379", "ray://head-node", "head node:6379"]:
        with pytest.raises(ConfigError, match=r"train\.ray_address: not a Ray cluster address: use 'auto'"):
            load_config(quickstart, [f"train.ray_address={address}"])


def test_clip_ratio_high_is_symmetric_by_default_and_takes_dapo_clip_higher():
    quickstart = ROOT / "configs" / "quickstart.yaml"
    train = load_config(quickstart).train
    assert (train.clip_ratio, train.clip_ratio_high) == (0.2, None)
    assert load_config(quickstart, ["train.clip_ratio_high=0.28"]).train.clip_ratio_high == 0.28
    assert load_config(quickstart, ["train.clip_ratio_high=0.2"]).train.clip_ratio_high == 0.2  # equal: allowed
    with pytest.raises(ConfigError, match=r"clip_ratio_high \(0.25\) is below clip_ratio \(0.3\)"):
        load_config(quickstart, ["train.clip_ratio=0.3", "train.clip_ratio_high=0.25"])
    with pytest.raises(ConfigError, match=r"train\.clip_ratio_high: .*less than or equal to 10"):
        load_config(quickstart, ["train.clip_ratio_high=11"])
