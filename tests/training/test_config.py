import pytest

from progress_stream.training.config import MODEL_FIELDS, ConfigError, TrainConfig, load_config


def test_no_config_is_the_dataclass_defaults():
    assert load_config() == TrainConfig()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('weighted_loss = "false"', "weighted_loss"),
        ("hidden_dim = 64.0", "hidden_dim"),
        ("hidden_dim = true", "hidden_dim"),
        ('lr = "0.01"', "lr"),
        ('output = "tanh"', "output"),
        ("members = 0", "members"),
        ("dropout = 1.0", "dropout"),
        ("lr_floor = 1.5", "lr_floor"),
        ("lr_floor = -0.1", "lr_floor"),
        ("input_rank = -1", "input_rank"),
        ("input_rank = 32.0", "input_rank"),
        ("average_top = 0", "average_top"),
        ("teacher_decay = 1.0", "teacher_decay"),
        ("teacher_decay = -0.1", "teacher_decay"),
        ("label_weight = -0.03", "label_weight"),
        ("label_weight = true", "label_weight"),
        ("hidden = 64", "hidden"),
    ],
)
def test_toml_values_are_type_checked_and_the_error_names_the_key(tmp_path, toml, key):
    path = tmp_path / "bad.toml"
    path.write_text(toml + "\n")
    with pytest.raises(ConfigError, match=repr(key)):
        load_config(path)


def test_unreadable_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("hidden_dim = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_config(path)


def test_an_int_is_a_valid_float_but_a_bool_is_not_an_int():
    assert load_config(overrides=["lr=1"]).lr == 1
    with pytest.raises(ConfigError, match="'epochs'"):
        TrainConfig(epochs=True)


def test_overrides_are_read_as_toml_values_then_checked(tmp_path):
    path = tmp_path / "v.toml"
    path.write_text("hidden_dim = 32\nweighted_loss = true\n")
    cfg = load_config(path, ["hidden-dim=48", "output=clamp", "time_warp=0.5", "weighted_loss=false"])
    assert (cfg.hidden_dim, cfg.output, cfg.time_warp, cfg.weighted_loss) == (48, "clamp", 0.5, False)
    with pytest.raises(ConfigError, match="'weighted_loss'"):
        load_config(overrides=['weighted_loss="false"'])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(overrides=["epochs"])


@pytest.mark.parametrize("variant", ["relative", "none"])
def test_shipped_variants_load_and_only_change_what_they_say(variant):
    cfg = load_config(f"configs/{variant}.toml")
    assert cfg.position_encoding == variant and cfg.regime == "prefix"
    assert cfg.epochs == TrainConfig().epochs  # a variant does not repeat the defaults


def test_the_mean_teacher_variant_changes_the_teacher_only():
    assert load_config("configs/mean-teacher.toml") == TrainConfig(teacher_members=0, teacher_decay=0.99)


def test_model_fields_are_config_fields():
    assert set(MODEL_FIELDS) <= set(TrainConfig().to_dict())
