from progress_stream.training.config import TrainConfig
from progress_stream.training.sweep import RECIPES, recipe_config, sweep_table

# docs/training.md, "How the default was chosen"
CHOSEN = (
    "norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor0.3+edge0.25+warp0.7+70ep+rank96+share0.25+top5"
    "+label0.03"
)


def test_the_recipe_the_sweep_chose_is_the_default():
    assert recipe_config(CHOSEN) == TrainConfig() == recipe_config("default")


def test_every_recipe_is_a_valid_config():
    for name in RECIPES:
        recipe_config(name, threads=1)


def test_the_table_ranks_recipes_by_their_worst_family():
    rows = [
        {"recipe": r, "data": d, "ratio_to_bayes": x, "start_bias": 0.01, "end_bias": -0.02, "train_seconds": 10.0}
        for r, d, x in [("a", "f1", 0.3), ("a", "f2", 0.9), ("b", "f1", 0.5), ("b", "f2", 0.6)]
    ]
    lines = sweep_table(rows).splitlines()
    assert lines[2].startswith("| b | 0.500 | 0.600 | 0.600 |") and lines[3].startswith("| a | 0.300 | 0.900 | 0.900 |")


def test_the_ensemble_variant_is_the_recipe_the_one_member_default_replaced():
    from progress_stream.training.config import load_config

    expensive = recipe_config("norm+warp+ens3+h128+edge+band+offset")
    ensemble = TrainConfig(
        members=3,
        teacher_members=0,
        weight_decay=0.0,
        mlp_dim=32,
        lr=3e-3,
        lr_floor=0.0,
        epochs=40,
        edge_weight=0.5,
        time_warp=0.3,
        input_rank=0,
        average_top=1,
        label_weight=0.0,
    )
    assert load_config("configs/ensemble.toml") == expensive == ensemble
