import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emotion_summary.data import download
from emotion_summary.core.errors import UserError
from emotion_summary.data.records import RecordError, read_records

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "download_data.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def local_copies(fixtures, tmp_path) -> Path:
    src = tmp_path / "src"
    (src / "longemotion").mkdir(parents=True)
    (src / "psyqa").mkdir()
    shutil.copy(fixtures / "es_tiny.jsonl", src / "longemotion" / "Emotion_Summary.jsonl")
    shutil.copy(fixtures / "psyqa_tiny.json", src / "psyqa" / "PsyQA_example.json")
    return src


def test_from_dir_copies_and_validates(local_copies, tmp_path, capsys):
    out = tmp_path / "data"
    download.download_data(out_dir=str(out), from_dir=str(local_copies))
    assert len(read_records(out / "longemotion" / "Emotion_Summary.jsonl")) == 3
    assert (out / "psyqa" / "PsyQA_example.json").read_bytes() == \
        (local_copies / "psyqa" / "PsyQA_example.json").read_bytes()
    printed = capsys.readouterr().out
    assert "Emotion_Summary_origin.jsonl: not in" in printed  # optional, skipped with a note
    assert "user agreement" in printed and "non-commercial" in printed


def test_from_dir_finds_flat_layout(fixtures, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(fixtures / "es_tiny.jsonl", flat / "Emotion_Summary.jsonl")
    shutil.copy(fixtures / "psyqa_tiny.json", flat / "PsyQA_example.json")
    download.download_data(out_dir=str(tmp_path / "data"), from_dir=str(flat))
    assert (tmp_path / "data" / "psyqa" / "PsyQA_example.json").is_file()


def test_from_dir_bad_file_writes_nothing(local_copies, tmp_path):
    target = local_copies / "longemotion" / "Emotion_Summary.jsonl"
    target.write_text(target.read_text(encoding="utf-8") + '{"id": 9, "case_description": []}\n',
                      encoding="utf-8")
    out = tmp_path / "data"
    with pytest.raises(RecordError, match=r"Emotion_Summary.jsonl:line 4: field '"):
        download.download_data(out_dir=str(out), from_dir=str(local_copies))
    assert not (out / "longemotion" / "Emotion_Summary.jsonl").exists()


def test_from_dir_installs_nothing_when_a_later_file_is_bad(local_copies, tmp_path):
    (local_copies / "psyqa" / "PsyQA_example.json").write_text('[{"quest', encoding="utf-8")
    out = tmp_path / "data"
    with pytest.raises(RecordError, match="PsyQA_example.json"):
        download.download_data(out_dir=str(out), from_dir=str(local_copies))
    assert [p for p in out.rglob("*") if p.is_file()] == []  # the good ES file was not installed either


def test_from_dir_missing_required(fixtures, tmp_path):
    only_es = tmp_path / "only"
    only_es.mkdir()
    shutil.copy(fixtures / "es_tiny.jsonl", only_es / "Emotion_Summary.jsonl")
    with pytest.raises(UserError, match="missing PsyQA_example.json"):
        download.download_data(out_dir=str(tmp_path / "data"), from_dir=str(only_es))


def test_network_path_with_fakes(monkeypatch, local_copies, tmp_path, capsys):
    tried = []

    def fake_hf(repo_path, cache_dir):
        tried.append(repo_path)
        if repo_path == "Emotion Summary/Emotion_Summary.jsonl":
            return str(local_copies / "longemotion" / "Emotion_Summary.jsonl")
        if repo_path == "Emotion_Summary_origin.jsonl":  # third candidate
            return str(local_copies / "longemotion" / "Emotion_Summary.jsonl")
        raise download.NotInRepo(repo_path)

    def fake_url(url, dest):
        served = {download.PSYQA_URL: local_copies / "psyqa" / "PsyQA_example.json",
                  download.EXAMPLE_URL: FIXTURES / "es_tiny_gold.jsonl"}
        shutil.copy(served[url], dest)

    monkeypatch.setattr(download, "_hf_download", fake_hf)
    monkeypatch.setattr(download, "_url_download", fake_url)
    out = tmp_path / "data"
    download.download_data(out_dir=str(out))
    assert tried == ["Emotion Summary/Emotion_Summary.jsonl", "Emotion Summary/Emotion_Summary_origin.jsonl",
                     "Emotion_Summary/Emotion_Summary_origin.jsonl", "Emotion_Summary_origin.jsonl"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == \
        ["Emotion_Summary.jsonl", "Emotion_Summary_example.jsonl", "Emotion_Summary_origin.jsonl",
         "PsyQA_example.json"]  # the three gold examples the README scores against come too
    assert "WARNING: 3 reports in Emotion_Summary_origin.jsonl" in capsys.readouterr().err


def test_network_path_reports_every_candidate_tried(monkeypatch, tmp_path):
    def nowhere(repo_path, cache_dir):
        raise download.NotInRepo(repo_path)

    monkeypatch.setattr(download, "_hf_download", nowhere)
    with pytest.raises(UserError, match="tried Emotion Summary/Emotion_Summary.jsonl, Emotion_Summary/"):
        download.download_data(out_dir=str(tmp_path / "data"))


def test_optional_file_missing_from_hub_is_skipped(monkeypatch, local_copies, tmp_path, capsys):
    def only_inputs(repo_path, cache_dir):
        if repo_path == "Emotion Summary/Emotion_Summary.jsonl":
            return str(local_copies / "longemotion" / "Emotion_Summary.jsonl")
        raise download.NotInRepo(repo_path)

    monkeypatch.setattr(download, "_hf_download", only_inputs)
    def psyqa_only(url, dest):
        if url != download.PSYQA_URL:
            raise OSError("HTTP Error 404: Not Found")
        shutil.copy(local_copies / "psyqa" / "PsyQA_example.json", dest)

    monkeypatch.setattr(download, "_url_download", psyqa_only)
    download.download_data(out_dir=str(tmp_path / "data"))
    err = capsys.readouterr().err
    assert "Emotion_Summary_origin.jsonl: not found" in err
    assert "Emotion_Summary_example.jsonl: downloading" in err and "skipped (optional)" in err
    assert (tmp_path / "data" / "psyqa" / "PsyQA_example.json").is_file()


def test_network_failure_is_one_line(monkeypatch, tmp_path):
    def offline(repo_path, cache_dir):
        raise ConnectionError("no route to host\nmore detail")

    monkeypatch.setattr(download, "_hf_download", offline)
    with pytest.raises(UserError, match=r"failed: ConnectionError: no route to host\. Offline\? .* --from_dir FOLDER$"):
        download.download_data(out_dir=str(tmp_path / "data"))
    assert list(tmp_path.iterdir()) == []  # no empty data/ left behind


def test_corrupt_psyqa_download_is_not_installed(monkeypatch, local_copies, tmp_path):
    monkeypatch.setattr(download, "_hf_download",
                        lambda p, c: str(local_copies / "longemotion" / "Emotion_Summary.jsonl"))
    monkeypatch.setattr(download, "_url_download", lambda url, dest: Path(dest).write_text(
        "[{\"quest" if url == download.PSYQA_URL else (FIXTURES / "es_tiny_gold.jsonl").read_text()))
    out = tmp_path / "data"
    with pytest.raises(RecordError, match="invalid JSON"):
        download.download_data(out_dir=str(out))
    assert not out.exists()  # neither the good ES file nor the temporary folder, nor the folder made for them


def test_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out_dir", str(tmp_path / "d"),
                           "--from_dir", str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no such directory")
