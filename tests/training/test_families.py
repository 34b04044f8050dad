import json

import numpy as np
import pytest

from progress_stream.training.families import FAMILIES, FamilyConfig, make_family
from progress_stream.training.synth import synthesize
from tests.conftest import subset_annotations

SEGMENTS = [("0", 0, 4), ("a", 5, 44), ("0", 45, 49), ("b", 50, 59), ("a", 60, 99)]


def video(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return make_family(name, FamilyConfig(dim=32, seed=seed)).video(SEGMENTS, 100, "task")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_gives_finite_float32_features_and_a_monotone_phase(name):
    x, phase = video(name)
    assert x.shape == (100, 32) and x.dtype == np.float32 and np.isfinite(x).all()
    assert phase.shape == (100, 1) and phase.dtype == np.float32
    for _, s, e in SEGMENTS[1::2]:
        p = phase[s : e + 1, 0]
        assert p.min() >= 0 and p.max() <= 1 and np.all(np.diff(p) >= -1e-6)
    assert np.all(phase[:5] == 0)  # background


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_is_deterministic_for_a_seed_and_changes_with_it(name):
    a, b, c = video(name, 0)[0], video(name, 0)[0], video(name, 1)[0]
    assert np.array_equal(a, b) and not np.allclose(a, c)


def test_families_differ_in_normalisation_and_structure():
    smooth, substeps, cyclic, shifted = (video(n)[0] for n in ("smooth", "substeps", "cyclic", "shifted"))
    for x in (smooth, substeps, cyclic):
        assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)  # GTCC-like, L2-normalised
    assert (shifted >= 0).all() and np.linalg.norm(shifted, axis=1).min() > 2  # CNN-like, unnormalised
    jumps = np.linalg.norm(np.diff(substeps[5:45], axis=0), axis=1)
    steps = np.linalg.norm(np.diff(smooth[5:45], axis=0), axis=1)
    assert jumps.max() / np.median(jumps) > steps.max() / np.median(steps)  # abrupt sub-step changes


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown family 'nope'; known: smooth, substeps, cyclic, shifted"):
        make_family("nope", FamilyConfig())


@pytest.mark.parametrize("stride", [8, 3])
def test_synth_writes_the_gtcc_layout_with_the_phase_beside_it(tmp_path, stride):
    real = subset_annotations(tmp_path / "real.json", tasks=1, handles=2)
    summary = synthesize(real, tmp_path / "out", FamilyConfig(stride=stride, dim=8), "cyclic")
    assert summary["family"] == "cyclic" and summary["stride"] == stride
    annotations = json.loads((tmp_path / "out" / "annotations.json").read_text())
    raw = json.loads(real.read_text())
    task = next(iter(annotations))
    for i, handle in enumerate(annotations[task]["handles"]):
        ends = annotations[task]["hdl_end_times"][i]
        assert ends == [e // stride for e in raw[task]["hdl_end_times"][i]]
        x = np.load(tmp_path / "out" / "features" / f"{handle}.npy")
        phase = np.load(tmp_path / "out" / "phase" / f"{handle}.npy")
        assert x.shape == (max(ends) + 1, 8) and phase.shape == (max(ends) + 1, 1)


def test_the_phase_probe_tells_features_that_carry_the_phase_from_noise(tiny_data, tmp_path):
    """The probe scores the real features well and pure noise near zero (on the same videos and phases)."""
    from progress_stream.training.probe import phase_r2

    noise = tmp_path / "noise"
    (noise / "features").mkdir(parents=True)
    (noise / "annotations.json").write_bytes((tiny_data / "annotations.json").read_bytes())
    rng = np.random.default_rng(0)
    for path in (tiny_data / "features").glob("*.npy"):
        np.save(noise / "features" / path.name, rng.standard_normal(np.load(path).shape).astype(np.float32))
    (noise / "phase").symlink_to(tiny_data / "phase")
    assert phase_r2(tiny_data, window=1) > 0.5
    assert phase_r2(noise, window=1) < 0.1


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_clean_family_keeps_the_phase_and_drops_only_the_noise(name):
    """Clean and noisy share every other draw: the same phase, and content that differs from the noisy one."""
    (x, phase), (clean, clean_phase) = (
        make_family(name, FamilyConfig(dim=32, clean=c)).video(SEGMENTS, 100, "task") for c in (False, True)
    )
    assert np.array_equal(phase, clean_phase) and not np.allclose(x, clean)
    a = clean[SEGMENTS[1][1] : SEGMENTS[1][2] + 1]
    if name == "substeps":  # no jitter, no noise: a sub-step is one embedding, repeated
        assert 2 <= len(np.unique(a, axis=0)) <= 6
    if name == "shifted":  # no distractor walk, no noise: the upper half is softplus(0) × scale, constant
        assert np.allclose(clean[:, 16:], clean[0, 16:])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_draw_is_new_instances_of_the_same_classes(name):
    """Another draw keeps every class (without noise, an action still starts and ends on the same embeddings)
    and draws new instances of it (the phase in between differs); draw 0 is the dataset without a draw."""

    def make(draw: int) -> tuple[np.ndarray, np.ndarray]:
        return make_family(name, FamilyConfig(dim=32, clean=True, draw=draw)).video(SEGMENTS, 100, "task")

    (x0, phase0), (x1, phase1) = make(0), make(1)
    assert np.array_equal(x0, make_family(name, FamilyConfig(dim=32, clean=True)).video(SEGMENTS, 100, "task")[0])
    for _, s, e in SEGMENTS[1::2]:
        assert np.allclose(x0[[s, e]], x1[[s, e]], atol=1e-6)
    assert not np.array_equal(phase0, phase1)
    with pytest.raises(ValueError, match="draw"):
        make_family(name, FamilyConfig(draw=-1))


@pytest.mark.parametrize(("key", "value"), [("draw", -1), ("stride", 0), ("dim", 0)])
def test_a_family_config_out_of_range_is_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"{key} must be at least"):
        FamilyConfig(**{key: value})


def test_synth_clean_writes_the_same_annotations_and_phases(tmp_path):
    real = subset_annotations(tmp_path / "real.json", tasks=1, handles=2)
    noisy, clean = (
        synthesize(real, tmp_path / k, FamilyConfig(stride=8, dim=8, clean=k == "clean"), "substeps")
        for k in ("noisy", "clean")
    )
    assert clean["clean"] and not noisy["clean"]
    assert (tmp_path / "noisy/annotations.json").read_bytes() == (tmp_path / "clean/annotations.json").read_bytes()
    for path in (tmp_path / "noisy/phase").glob("*.npy"):
        assert np.array_equal(np.load(path), np.load(tmp_path / "clean/phase" / path.name))
