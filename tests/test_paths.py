from pathlib import Path

from ganforge.paths import cache_dir


def test_cache_dir_defaults_when_unset_or_empty_and_expands_home(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("GANFORGE_CACHE", raising=False)
    assert cache_dir() == tmp_path / ".cache" / "ganforge"
    monkeypatch.setenv("GANFORGE_CACHE", "")  # as `export GANFORGE_CACHE=` leaves it: unset, not the working dir
    assert cache_dir() == tmp_path / ".cache" / "ganforge"
    monkeypatch.setenv("GANFORGE_CACHE", "~/elsewhere")
    assert cache_dir() == tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GANFORGE_CACHE", "rel")
    assert cache_dir() == Path(tmp_path, "rel") and cache_dir().is_absolute()
