"""``smallmed demo``: a demo folder left by an earlier smallmed (other settings) is redone, not refused."""

from __future__ import annotations

from pathlib import Path

from smallmed import demo
from smallmed.errors import SettingsChangedError
from smallmed.studies import svd


def test_a_demo_folder_with_other_settings_starts_over(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_study(study, out, *, workers=1, bar=False, fresh=False):
        calls.append(fresh)
        if not fresh:
            raise SettingsChangedError(f"{out}: its cells were run with other settings (source_epochs: saved 6, now 3)")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "summary.md").write_text("## Fraction 1/8\n| table |\n")
        return Path(out) / "report.md"

    monkeypatch.setattr(svd, "run_svd_study", fake_study)
    monkeypatch.setattr(svd, "resolve_source", lambda s: s)
    monkeypatch.setattr("smallmed.data.resolve_data", lambda *a, **k: None)
    demo.run_demo(str(tmp_path / "demo"))
    out = capsys.readouterr().out
    assert calls == [False, True]
    assert "a demo run with other settings" in out and "| table |" in out
