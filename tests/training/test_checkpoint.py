import pytest
import torch

from progress_stream.training.checkpoint import SCHEMA_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from progress_stream.training.config import TrainConfig
from progress_stream.training.model import ProgressHead


def saved_then_edited(path, model: ProgressHead, cfg: TrainConfig, edit) -> None:
    """A checkpoint of ``model`` at ``path``, its raw dict changed by ``edit`` as an older or foreign writer
    would have left it."""
    save_checkpoint(path, model, cfg, {}, {})
    raw = torch.load(path, weights_only=False)
    edit(raw)
    torch.save(raw, path)


def test_round_trip_keeps_weights_config_and_metadata(tmp_path):
    cfg = TrainConfig(hidden_dim=8, members=2, layers=2)
    model = ProgressHead(5, 9.0, **cfg.model_kwargs())
    model.fit_input_norm(torch.randn(50, 5) * 3 + 1)
    path = tmp_path / "best.pt"
    save_checkpoint(path, model, cfg, {"length_median": 9.0}, {"epoch": 3})
    loaded, meta = load_checkpoint(path)
    assert meta.train_config == cfg and meta.data == {"length_median": 9.0} and meta.metrics == {"epoch": 3}
    assert meta.model_config == model.config and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not (tmp_path / "best.pt.tmp").exists()


def test_another_schema_is_refused_with_the_file_named(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"state_dict": {}, "model_config": {}}, path)  # the first release's layout
    with pytest.raises(
        CheckpointError, match=f"old.pt: checkpoint schema none, this version reads schema {SCHEMA_VERSION}"
    ):
        load_checkpoint(path)


def test_a_missing_part_is_named(tmp_path):
    path = tmp_path / "partial.pt"
    torch.save({"schema": SCHEMA_VERSION, "model_config": {}}, path)
    with pytest.raises(CheckpointError, match="lacks state_dict, train_config, data, metrics"):
        load_checkpoint(path)


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    cfg = TrainConfig(hidden_dim=8, members=1)
    model = ProgressHead(5, 9.0, **cfg.model_kwargs())
    path = tmp_path / "mismatch.pt"
    saved_then_edited(path, model, cfg, lambda raw: raw["model_config"].update(hidden_dim=16))
    with pytest.raises(CheckpointError, match="does not match its model_config"):
        load_checkpoint(path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x00not a zip file")
    with pytest.raises(CheckpointError, match=r"noise\.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_a_checkpoint_from_before_the_progress_offset_reads_without_one(tmp_path):
    cfg = TrainConfig(hidden_dim=8)
    model = ProgressHead(5, 9.0, **cfg.model_kwargs())
    model.progress_offset.fill_(0.05)
    path = tmp_path / "earlier.pt"
    saved_then_edited(path, model, cfg, lambda raw: raw["state_dict"].pop("progress_offset"))
    loaded, _ = load_checkpoint(path)
    assert not loaded.progress_offset.any()
    assert torch.equal(loaded.state_dict()["band_offset"], model.band_offset)


def test_a_checkpoint_from_before_the_low_rank_input_reads_the_whole_embedding(tmp_path):
    cfg = TrainConfig(hidden_dim=8, input_rank=0)
    model = ProgressHead(5, 9.0, **cfg.model_kwargs())
    path = tmp_path / "earlier.pt"
    saved_then_edited(
        path, model, cfg, lambda raw: (raw["model_config"].pop("input_rank"), raw["train_config"].pop("input_rank"))
    )
    loaded, meta = load_checkpoint(path)
    assert meta.model_config["input_rank"] == 0 and meta.train_config.input_rank == 0
    assert loaded.members[0].gru.input_size == 5 + 1
    x = torch.randn(2, 7, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x, dense=True)[0], model.eval()(x, dense=True)[0])


def test_a_checkpoint_from_before_the_mean_of_the_best_epochs_says_it_kept_one_epoch(tmp_path):
    cfg = TrainConfig(hidden_dim=8)
    path = tmp_path / "earlier.pt"
    saved_then_edited(
        path, ProgressHead(5, 9.0, **cfg.model_kwargs()), cfg, lambda raw: raw["train_config"].pop("average_top")
    )
    _, meta = load_checkpoint(path)
    assert meta.train_config.average_top == 1 and TrainConfig().average_top == 5


def test_a_checkpoint_from_before_the_two_sided_band_widens_both_ends_by_its_one_offset(tmp_path):
    cfg = TrainConfig(hidden_dim=8)
    model = ProgressHead(5, 9.0, **cfg.model_kwargs()).eval()
    one = torch.linspace(-0.05, 0.2, len(model.band_offset))
    path = tmp_path / "earlier.pt"
    saved_then_edited(path, model, cfg, lambda raw: raw["state_dict"].update(band_offset=one))
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.band_offset, torch.stack([one, one], dim=1))
    model.band_offset.copy_(torch.stack([one, one], dim=1))
    x = torch.randn(2, 230, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x, dense=True)[1], model(x, dense=True)[1])


@pytest.mark.parametrize("shape", [(150,), (201, 3)])
def test_a_band_table_of_another_shape_is_refused_with_the_file_named(tmp_path, shape):
    cfg = TrainConfig(hidden_dim=8)
    path = tmp_path / "odd.pt"
    saved_then_edited(
        path,
        ProgressHead(5, 9.0, **cfg.model_kwargs()),
        cfg,
        lambda raw: raw["state_dict"].update(band_offset=torch.zeros(shape)),
    )
    with pytest.raises(CheckpointError, match=r"odd\.pt: checkpoint does not match its model_config"):
        load_checkpoint(path)
