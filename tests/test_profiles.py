import pytest

from engine.profiles import PROFILES, load_profile


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_loads(name):
    profile = load_profile(name)
    assert profile.data.image_size >= 28 and profile.data.phantom_size >= 70


def test_bad_profiles_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        load_profile("huge")
    (tmp_path / "x.toml").write_text("[data]\nimage_size = 32\nphantom_size = 70\nsplit_seed = 0\nextra = 1\n")
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        load_profile("x", tmp_path)
