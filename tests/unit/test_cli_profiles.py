"""The CLI's profile file: a home it may not read is no profile (not an unexpected error), and
messages about the implicit profile name it [default]."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferrohsm.cli.settings import UsageError, load_profile


def test_a_home_this_user_may_not_read_holds_no_profile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """runuser, su without -, sudo -E: HOME is another user's 0700 folder. The real check
    needs an unprivileged user (root reads everything), so the stat's refusal is made here."""
    def refused(self: Path, *args: object, **kwargs: object) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", refused)
    env = {"HOME": str(tmp_path)}
    assert load_profile(None, env, required=False) == {}
    with pytest.raises(UsageError, match="cannot be read"):
        load_profile("staging", env, required=True)


def test_messages_about_the_implicit_profile_name_it_default(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles.toml"
    profiles.write_text('[default]\nserverr = "https://x"\n')
    with pytest.raises(UsageError, match=r"\[default\] has unknown setting\(s\) serverr"):
        load_profile(None, {"FERROHSM_PROFILE_FILE": str(profiles)}, required=False)


def test_a_profile_file_named_in_the_environment_must_exist(tmp_path: Path) -> None:
    """FERROHSM_PROFILE_FILE naming a missing file was ignored without a word, and every
    setting came from elsewhere (an outside tester); the default location may be absent."""
    with pytest.raises(UsageError, match=r"FERROHSM_PROFILE_FILE names .* which does not exist"):
        load_profile(None, {"FERROHSM_PROFILE_FILE": str(tmp_path / "nope.toml")},
                     required=False)
    assert load_profile(None, {"HOME": str(tmp_path)}, required=False) == {}
