import dataclasses

import pytest
import yaml

from reviewgpt.errors import UserError
from reviewgpt.recipe import Recipe, builtin_recipes, field_types, load_recipe


def test_every_builtin_recipe_loads_with_the_declared_types():
    hints = field_types()
    assert set(builtin_recipes()) >= {"gemma-7b-it", "mistral-7b-instruct-v0.2", "tiny"}
    for name, path in builtin_recipes().items():
        recipe = load_recipe(name)
        assert recipe.name == name
        assert path.read_text().startswith("#"), "each recipe starts with a comment showing how to run it"
        raw = yaml.safe_load(path.read_text())
        for key, value in raw.items():
            if hints[key] is float:
                assert isinstance(value, float), f"{name}: {key} should be written as a YAML float"


def test_gemma_recipe_has_the_reference_hyper_parameters():
    r = load_recipe("gemma-7b-it")
    assert (r.per_device_train_batch_size, r.per_device_eval_batch_size, r.gradient_accumulation_steps) == (1, 1, 16)
    assert (r.learning_rate, r.max_grad_norm, r.weight_decay) == (2e-4, 0.3, 0.001)
    assert (r.lora_r, r.lora_alpha, r.lora_dropout) == (64, 16, 0.1)
    assert (r.max_seq_length, r.optim, r.lr_scheduler_type, r.warmup_ratio) == (8192, "paged_adamw_32bit",
                                                                                   "constant", 0.03)
    assert (r.save_steps, r.save_total_limit, r.logging_steps, r.num_train_epochs) == (10, 3, 10, 2.0)
    assert r.bf16 and r.gradient_checkpointing and r.quantize and r.prompt_budget == 7168  # the reference's
    assert r.template == "gemma-it"  # the model's own format; alpaca-reference reproduces the reference text


def test_mistral_recipe_runs_at_12288_tokens():
    r = load_recipe("mistral-7b-instruct-v0.2")
    assert r.max_seq_length == 12288 and r.family == "mistral" and r.ddp_timeout == 180000000


def test_overrides_win_over_yaml_and_are_type_checked():
    r = load_recipe("gemma-7b-it", {"max_seq_length": 4096, "finetune": "lora", "lora_target_modules": "q_proj,v_proj",
                                    "learning_rate": None})
    assert (r.max_seq_length, r.quantize, r.lora_target_modules, r.learning_rate) == (4096, False,
                                                                                      ("q_proj", "v_proj"), 2e-4)
    with pytest.raises(UserError, match="--max-seq-length must be an integer"):
        load_recipe("gemma-7b-it", {"max_seq_length": "long"})


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", -1.0, "--learning-rate must be > 0, got -1.0"),
    ("max_steps", -5, "--max-steps must be -1 or >= 1, got -5"),
    ("num_train_epochs", -1.0, "--num-train-epochs must be > 0, got -1.0"),
    ("warmup_ratio", 1.5, r"--warmup-ratio must be in \[0, 1\], got 1.5"),
    ("weight_decay", float("nan"), "--weight-decay must be >= 0, got nan"),
    ("save_total_limit", 0, "--save-total-limit must be >= 1, got 0"),
    ("seed", -3, "--seed must be in"),
    ("template", "chatml", "--template must be one of"),
])
def test_a_bad_override_names_the_flag_not_the_yaml(field, value, message):
    with pytest.raises(UserError, match=message) as info:
        load_recipe("tiny", {field: value})
    assert "tiny.yaml" not in str(info.value)


def test_every_numeric_field_has_a_range():

    for f in dataclasses.fields(Recipe):
        if field_types()[f.name] in (int, float):
            assert "range" in f.metadata, f"{f.name} has no range"


def test_a_recipe_path_that_does_not_exist_says_so():
    with pytest.raises(UserError, match=r"--recipe ./nosuch.yaml: no such file"):
        load_recipe("./nosuch.yaml")


def test_recipes_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_recipe("tiny").learning_rate = 1.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate: 2e-4\n", r"learning_rate must be a number, got '2e-4' \(write YAML floats with a dot"),
        ("lora_rank: 8\n", r"unknown recipe field\(s\) \['lora_rank'\]"),
        ("loss_on: prompt\n", r"loss_on must be one of \['review', 'all'\], got 'prompt'"),
        ("max_seq_length: 0\n", r"max_seq_length must be >= 1, got 0"),
        ("template: chatml\n", r"template must be one of"),
        ("- a\n- b\n", "must be a YAML mapping"),
    ],
)
def test_bad_yaml_recipes_name_the_file_and_value(tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        load_recipe(str(path))
    assert str(path) in str(info.value)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown recipe 'llama-70b'; choose one of: .*gemma-7b-it"):
        load_recipe("llama-70b")


def test_recipe_validation_in_post_init():
    with pytest.raises(ValueError, match="lora_dropout must be in"):
        Recipe(lora_dropout=1.5)


def test_speed_options_are_one_frozen_dataclass_and_flat_yaml_still_loads(tmp_path):
    from reviewgpt.recipe.speed_options import SpeedOptions

    nested = load_recipe("gemma-7b-it")
    assert isinstance(nested.speed, SpeedOptions) and nested.speed.chunked_loss
    with pytest.raises(dataclasses.FrozenInstanceError):
        nested.speed.lean_mlp = True
    flat = tmp_path / "flat.yaml"  # a recipe written before the options moved under `speed:`
    flat.write_text("family: gemma\nchunked_loss: false\ncheckpoint_skip_layers: auto\nlean_mlp: true\n")
    old = load_recipe(str(flat))
    assert (old.speed.chunked_loss, old.speed.checkpoint_skip_layers, old.speed.lean_mlp) == (False, "auto", True)
    with pytest.raises(AttributeError):  # one way to read an option: recipe.speed
        old.lean_mlp  # noqa: B018
    assert old.with_speed(lean_mlp=False).speed.lean_mlp is False
    with pytest.raises(TypeError):  # replace takes the recipe's own fields; with_speed the options
        old.replace(lean_mlp=False)
    assert load_recipe(str(flat), {"lean_mlp": False}).speed.lean_mlp is False
    saved = tmp_path / "saved.yaml"  # what a run folder holds: the options under `speed:`
    from reviewgpt.recipe import save_recipe

    save_recipe(old, saved)
    assert yaml.safe_load(saved.read_text())["speed"]["checkpoint_skip_layers"] == "auto"
    assert load_recipe(str(saved)) == old  # the saved name wins over the file name
    bad = tmp_path / "bad.yaml"
    bad.write_text("speed:\n  chunked_los: true\n")
    with pytest.raises(UserError, match=r"unknown recipe field\(s\) \['speed.chunked_los'\]"):
        load_recipe(str(bad))
    with pytest.raises(UserError, match="--checkpoint-skip-layers must be >= 0"):
        load_recipe("tiny", {"checkpoint_skip_layers": -1})
