import pytest

from engine.profiles import PROFILES, load_profile
from engine.recipes.registry import checked_profile


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads(name):
    profile = checked_profile(name)
    assert profile.data.image_size >= 28 and profile.data.phantom_size >= 70


def test_bad_profiles_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        load_profile("huge")
    (tmp_path / "x.toml").write_text("[data]\nimage_size = 32\nphantom_size = 70\nsplit_seed = 0\nextra = 1\n")
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        load_profile("x", tmp_path)


def profile_with(folder, name: str, jobs: str) -> str:
    """Write configs-like NAME.toml with a minimal [data] and the given job sections; return its name."""
    (folder / f"{name}.toml").write_text("[data]\nimage_size = 32\nphantom_size = 70\nsplit_seed = 0\n" + jobs)
    return name


def test_job_parameters_are_validated_against_their_kind(tmp_path):
    with pytest.raises(ValueError, match=r"(?s)\[jobs.train_vae\].*stepz"):
        checked_profile(profile_with(tmp_path, "a", "[jobs.train_vae]\nstepz = 3\n"), tmp_path)
    with pytest.raises(ValueError, match="unknown job kind 'train_gpt'"):
        checked_profile(profile_with(tmp_path, "b", "[jobs.train_gpt]\nsteps = 3\n"), tmp_path)
    assert load_profile("a", tmp_path).params("train_vae") == {"stepz": 3}  # unchecked: the engine checks on submit


def test_profile_params_with_overrides():
    assert load_profile("smoke").params("train_vae", steps=3)["steps"] == 3


def test_mixed_precision_means_one_thing_everywhere_and_the_old_spelling_says_so(tmp_path):
    old = profile_with(tmp_path, "sd", '[jobs.finetune_sd]\npipeline = "x"\nmixed_precision = "bf16"\n')
    with pytest.raises(ValueError, match=r"mixed_precision is true or false, as in every recipe"):
        checked_profile(old, tmp_path)
    new = profile_with(tmp_path, "ok", '[jobs.finetune_sd]\npipeline = "x"\nmixed_precision = true\n')
    assert checked_profile(new, tmp_path).params("finetune_sd")["mixed_precision"] is True


def test_resources_come_per_kind_over_the_default_and_a_wrong_one_is_named(tmp_path):
    paper = checked_profile("paper")
    assert paper.launch("pretrain_mae")["resources"].gpus_per_node == 1  # the default, under the kind's own
    assert paper.launch("pretrain_mae")["resources"].time_limit_min == 2880
    assert paper.launch("score")["resources"].time_limit_min == 240  # no section of its own: the default
    two_nodes = profile_with(tmp_path, "m", "[resources.pretrain_mae]\nnodes = 2\ngpus_per_node = 4\n"
                                            "num_processes = 8\n")
    assert checked_profile(two_nodes, tmp_path).launch("pretrain_mae")["num_processes"] == 8
    with pytest.raises(ValueError, match=r"(?s)\[resources.pretrain_mae\].*multiple of resources.nodes"):
        load_profile(profile_with(tmp_path, "n", "[resources.pretrain_mae]\nnodes = 2\nnum_processes = 3\n"),
                     tmp_path)
    with pytest.raises(ValueError, match=r"(?s)\[resources.finetune\].*multiple of resources.nodes"):
        load_profile(profile_with(tmp_path, "d", "[resources.default]\nnodes = 2\nnum_processes = 2\n"
                                                 "[resources.finetune]\nnum_processes = 3\n"),
                     tmp_path)  # each section fits alone; merged, finetune's 3 processes do not fill 2 nodes
    with pytest.raises(ValueError, match=r"\[resources.train_gpt\]: unknown job kind"):
        checked_profile(profile_with(tmp_path, "k", "[resources.train_gpt]\ngpus_per_node = 1\n"), tmp_path)
    with pytest.raises(ValueError, match=r"(?s)\[resources.default\].*gpus"):
        load_profile(profile_with(tmp_path, "g", "[resources.default]\ngpus = 1\n"), tmp_path)
