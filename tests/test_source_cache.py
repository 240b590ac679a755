"""`spermhead cache`: the cached synthetic sources listed, and removed only as asked."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from spermhead.cli import app
from spermhead.training.options import build_run_config
from spermhead.training.synthetic_init import source_path, source_settings


def _source(folder: Path, stem: str, settings: dict | None, days_old: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    weights.write_bytes(b"w" * 2048)
    if settings is not None:
        (folder / f"{stem}.json").write_text(json.dumps({"settings": settings, "classes": ["a", "b"]}))
    (folder / f"{stem}.lock").touch()
    when = weights.stat().st_mtime - days_old * 86400
    os.utime(weights, (when, when))
    return weights


def _cache(tmp_path, monkeypatch) -> tuple[Path, dict[str, Path]]:
    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    today = source_settings(build_run_config("hushem", "unused", threads=1, accelerator="cpu"))
    folder = source_path(build_run_config("hushem", "unused", threads=1, accelerator="cpu")).parent
    old = {k: v for k, v in today.items() if k != "threads"}  # as sources were written before session 30
    made = {"current": _source(folder, "spermnet-aaaa", today),
            "stale": _source(folder, "spermnet-bbbb", old, days_old=10),
            "unreadable": _source(folder, "spermnet-cccc", None, days_old=3)}
    (folder / "spermnet-bbbb-backbone-123456789abc.safetensors").write_bytes(b"b" * 1024)
    return folder, made


def test_cache_lists_its_sources_and_marks_the_ones_no_run_starts_from(tmp_path, monkeypatch):
    folder, made = _cache(tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["cache", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["source"]: r for r in json.loads(result.output)}
    assert set(rows) == {"spermnet-aaaa", "spermnet-bbbb", "spermnet-cccc"}  # the backbone copy goes with its source
    assert [rows[s]["stale"] for s in ("spermnet-aaaa", "spermnet-bbbb", "spermnet-cccc")] == [False, True, True]
    assert rows["spermnet-aaaa"]["trained_on"] == "1 thread" and rows["spermnet-aaaa"]["model"] == "spermnet"
    assert rows["spermnet-bbbb"]["megabytes"] == round(3072 / 2**20, 1)
    shown = CliRunner().invoke(app, ["cache"], terminal_width=200)
    assert shown.exit_code == 0 and "3 source models" in shown.output and "--stale --clear" in shown.output
    assert all(p.is_file() for p in made.values())  # listing removes nothing


def test_cache_clear_removes_only_what_was_picked(tmp_path, monkeypatch):
    folder, made = _cache(tmp_path, monkeypatch)
    result = CliRunner().invoke(app, ["cache", "--stale", "--older-than", "5", "--clear"])
    assert result.exit_code == 0 and "removed 1 source models" in result.output, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["spermnet-aaaa.safetensors", "spermnet-aaaa.json", "spermnet-aaaa.lock",
         "spermnet-cccc.safetensors", "spermnet-cccc.lock"])  # the 10-day-old stale source, copy, record and lock gone
    result = CliRunner().invoke(app, ["cache", "--stale", "--clear"])
    assert result.exit_code == 0 and "removed 1 source models" in result.output, result.output
    assert made["current"].is_file() and not made["unreadable"].exists()
    again = CliRunner().invoke(app, ["cache", "--stale"])
    assert again.exit_code == 0 and "no cached source models of that kind" in again.output, again.output


def test_cache_clear_keeps_a_source_a_run_is_training(tmp_path, monkeypatch):
    import fcntl

    folder, made = _cache(tmp_path, monkeypatch)
    made["stale"].write_bytes(b"w" * 3 * 2**20)
    with open(made["stale"].with_suffix(".lock"), "a") as held:  # as synthetic_init holds it while it trains
        fcntl.flock(held, fcntl.LOCK_EX)
        result = CliRunner().invoke(app, ["cache", "--stale", "--clear"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "removed 1 source models (0 MB)" in said and "kept spermnet-bbbb.safetensors" in said  # kept: not counted
    assert made["stale"].is_file() and made["stale"].with_suffix(".json").is_file()
    assert not made["unreadable"].exists()


def test_cache_refuses_an_endless_age(tmp_path, monkeypatch):
    monkeypatch.setenv("SPERMHEAD_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["cache", "--older-than", "inf", "--clear"])
    assert result.exit_code != 0 and "--older-than inf" in result.output, result.output
    empty = CliRunner().invoke(app, ["cache"])
    assert empty.exit_code == 0 and "no cached source models in" in empty.output, empty.output
