"""Report synthesis against a fake teacher on 127.0.0.1: schema, re-asks, rejects, gates, resume, cost."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from emotion_summary.teacher.client import ChatClient
from emotion_summary.core.errors import UserError
from emotion_summary.teacher.label import label_file, rejects_path
from emotion_summary.prompting.prompt import NOT_DESCRIBED
from emotion_summary.data.records import GOLD_FIELDS, Record, read_records, write_records
from emotion_summary.predicting.submission import check_submission, write_submission
from emotion_summary.teacher.synthesize import (ID_OFFSET, PROMPT_VERSION, SOURCE, builtin_seeds, check_report, plan_jobs,
                                        read_seeds, synthesize_file)
from tests.chat_server import FakeChatServer
from tests.synth_teacher import SMALL, report_for, teacher

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "synthesize_reports.py"
SEEDS = ["Exam anxiety in a final-year student", "Grief after a father's death", "Panic attacks on the metro",
         "Conflict with a mother-in-law", "Insomnia after a night-shift job"]
# An "official" report long enough for 13-gram fingerprints; a synthetic copy of it must be dropped.
OFFICIAL = Record(
    id=7,
    case_description=("Visitor, female, 29 years old, single, a nurse in a city hospital. She came because she "
                      "has slept badly for three months and cries after night shifts without knowing why.",),
    consultation_process=(
        "In the first session she described the ward where a young patient died during her shift. She said she "
        "should have noticed earlier and that she replays the evening whenever she closes her eyes.",
        "In the second session we worked on her thoughts about blame. She wrote down what she knew at the time "
        "and what she learned later, and she noticed that the two lists were not the same.",
        "In the third session she reported sleeping five hours on most nights and asked for day shifts."),
    experience_and_reflection="Looking back, the turning point was separating hindsight from foresight. I let "
                              "her guilt stand long enough to be heard before questioning it; rushing that step "
                              "would have cost her trust.")


def seeds_file(tmp_path: Path, lines=SEEDS) -> Path:
    path = tmp_path / "topics.txt"
    path.write_text("# my topics\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def official_file(tmp_path: Path) -> Path:
    return write_records(tmp_path / "official.jsonl", [OFFICIAL])


def client(server: FakeChatServer, model: str = "teacher") -> ChatClient:
    return ChatClient(server.endpoint, model, max_retries=0, backoff_s=0.0, timeout_s=10)


def synth(server, tmp_path, seeds, n=5, model="teacher", **kw):
    kw.setdefault("official", [official_file(tmp_path)])
    return synthesize_file(str(seeds), n, tmp_path / "synthetic.jsonl", client(server, model), "en", SMALL,
                           concurrency=2, max_reasks=1, **kw)


def test_five_seeds_five_synthetic_records_and_a_rerun_sends_nothing(tmp_path):
    seeds = seeds_file(tmp_path)
    with FakeChatServer(teacher) as server:
        counts = synth(server, tmp_path, seeds)
        assert counts["kept"] == 5 and len(server.requests) == 5
        again = synth(server, tmp_path, seeds)
        assert len(server.requests) == 5 and again["kept"] == 0 and again["skipped_done"] == 5
    records = read_records(tmp_path / "synthetic.jsonl")
    assert len(records) == 5 and len({r.id for r in records}) == 5 and min(r.id for r in records) > ID_OFFSET
    for r in records:
        assert r.source == SOURCE and not r.has_gold
        assert r.synth_source["teacher"] == "teacher" and r.synth_source["prompt_version"] == PROMPT_VERSION
        assert r.synth_source["seed"] in SEEDS and r.synth_source["seed_origin"].startswith("topics.txt:line ")
        assert len(r.consultation_process) == SMALL.sessions and r.experience_and_reflection
    assert not rejects_path(tmp_path / "synthetic.jsonl").exists()


def test_more_reports_than_seeds_asks_for_variants(tmp_path):
    with FakeChatServer(teacher) as server:
        assert synth(server, tmp_path, seeds_file(tmp_path, SEEDS[:2]), n=5)["kept"] == 5
        variants = [m["messages"][1]["content"] for m in server.requests]
    assert sum("This is report 3 for this seed" in v for v in variants) == 1
    assert [j.key.split("/")[1] for j in plan_jobs(read_seeds(str(tmp_path / "topics.txt")), 5)] == \
        ["0", "0", "1", "1", "2"]


def copy_of_official(messages):
    """The teacher reproduces the official report, cosmetically changed (curly apostrophes, joined sessions)."""
    return json.dumps({"case_description": [OFFICIAL.case_description[0].replace("'", "\u2019")],
                       "consultation_process": [" ".join(OFFICIAL.consultation_process)] + ["More notes here."] * 2,
                       "experience_and_reflection": OFFICIAL.experience_and_reflection})


def test_report_copied_from_an_official_one_is_dropped_and_counted(tmp_path):
    seeds = seeds_file(tmp_path, SEEDS[:3] + ["COPY"])
    with FakeChatServer(partial(teacher, special={"COPY": copy_of_official})) as server:
        counts = synth(server, tmp_path, seeds, n=4)
        assert counts["kept"] == 3 and counts["official_overlap"] == 1
        assert synth(server, tmp_path, seeds, n=4)["skipped_done"] == 4 and len(server.requests) == 4
    assert synthesize_file(str(seeds), 5, tmp_path / "synthetic.jsonl", None, "en", SMALL, dry_run=True)["todo"] == 1
    assert len(read_records(tmp_path / "synthetic.jsonl")) == 3
    [row] = [json.loads(line) for line in rejects_path(tmp_path / "synthetic.jsonl").open()]
    assert row["gate"] == "official" and "official id 7" in row["reason"] and row["seed"] == "COPY"
    assert row["report"]["experience_and_reflection"] == OFFICIAL.experience_and_reflection


def test_near_duplicates_among_synthetic_reports_are_dropped_and_counted(tmp_path):
    same = {s: (lambda m: json.dumps(report_for("one text"))) for s in ("twin a", "twin b", "twin c")}
    with FakeChatServer(partial(teacher, special=same)) as server:
        counts = synthesize_file(str(seeds_file(tmp_path, ["twin a", "twin b", "twin c", "single"])), 4,
                                 tmp_path / "s.jsonl", client(server), "en", SMALL, concurrency=1)
    assert counts["kept"] == 2 and counts["duplicates"] == 2
    reasons = [json.loads(line)["reason"] for line in rejects_path(tmp_path / "s.jsonl").open()]
    assert all("near-duplicate of synthetic id" in r for r in reasons)


def fix_on_retry(messages):
    if len(messages) > 2:
        assert "experience_and_reflection is missing" in messages[-1]["content"]
        return json.dumps(report_for("fixed"))
    return json.dumps({k: v for k, v in report_for("broken").items() if k != "experience_and_reflection"})


def test_bad_replies_are_reasked_then_rejected_with_the_reason_and_retried_on_rerun(tmp_path):
    special = {"fix": fix_on_retry, "short": lambda m: json.dumps(report_for("short", SMALL.__class__(
        sessions=3, case_words=5, process_words=9, reflection_words=4))),
               "prose": lambda m: "I would rather not write that.", "refused": lambda m: (400, "too long")}
    seeds = seeds_file(tmp_path, list(special))
    with FakeChatServer(partial(teacher, special=special)) as server:
        counts = synth(server, tmp_path, seeds, n=4)
        assert counts["kept"] == 1 and counts["rejected"] == 3
        assert len(server.requests) == 2 + 2 + 2 + 1  # fix, short, prose re-asked once; a 400 is final
        rows = {json.loads(line)["seed"]: json.loads(line) for line in rejects_path(tmp_path / "synthetic.jsonl").open()}
        assert "case_description has 5 words, below the accepted 16-915" in rows["short"]["reason"]
        assert "--case_words 40" in rows["short"]["reason"]
        assert rows["prose"]["reason"] == "no JSON object in the reply" and rows["prose"]["last_reply"]
        assert "endpoint refused" in rows["refused"]["reason"]
        assert set(rows) == {"short", "prose", "refused"}
        server.requests.clear()
        synth(server, tmp_path, seeds, n=4)
        assert len(server.requests) == 5  # only the three rejects are asked again
    assert len(read_records(tmp_path / "synthetic.jsonl")) == 1


def tear_last_line(out):
    """As a run killed while writing its second report leaves the file."""
    lines = out.read_text(encoding="utf-8").split("\n")
    out.write_text(lines[0] + "\n" + lines[1][:50], encoding="utf-8")


def test_torn_last_line_is_repaired_and_its_report_requested_again(tmp_path):
    seeds = seeds_file(tmp_path, SEEDS[:2])
    out = tmp_path / "synthetic.jsonl"
    with FakeChatServer(teacher) as server:
        synth(server, tmp_path, seeds, n=2)
        tear_last_line(out)
        before = out.read_bytes()
        with pytest.raises(UserError, match="this run uses 'other'"):  # another teacher's run: refused
            synth(server, tmp_path, seeds, n=2, model="other")
        assert out.read_bytes() == before  # before any repair
        assert synth(server, tmp_path, seeds, n=2)["kept"] == 1 and len(server.requests) == 3
    assert len(read_records(out)) == 2


def test_rerun_with_another_teacher_is_refused(tmp_path):
    seeds = seeds_file(tmp_path, SEEDS[:1])
    with FakeChatServer(teacher) as server:
        synth(server, tmp_path, seeds, n=1)
        with pytest.raises(UserError, match="teacher 'teacher', this run uses 'other'"):
            synth(server, tmp_path, seeds, n=2, model="other")


def test_output_that_is_a_directory_or_under_a_file_is_refused_before_any_request(tmp_path):
    seeds = seeds_file(tmp_path, SEEDS[:1])
    for output, match in ((tmp_path, "is a directory"), (seeds / "out.jsonl", "is a file, not a directory")):
        with pytest.raises(UserError, match=match):
            synthesize_file(str(seeds), 1, output, None, "en", SMALL)


def test_check_report_reasons():
    good = report_for("x")
    assert check_report(json.dumps(good), SMALL, "en")[0]["experience_and_reflection"]
    as_string = {**good, "case_description": good["case_description"][0]}
    assert check_report(json.dumps(as_string), SMALL, "en")[0]["case_description"] == good["case_description"]
    assert check_report(json.dumps({**good, "consultation_process": ["", " "]}), SMALL, "en")[1] == \
        ["consultation_process is empty"]
    assert check_report(json.dumps({**good, "consultation_process": "one text"}), SMALL, "en")[1] == \
        ["consultation_process is not a list of strings"]
    many = {**good, "consultation_process": good["consultation_process"] * 20}
    problems = check_report(json.dumps(many), SMALL, "en")[1]
    assert any(p.startswith("consultation_process has 60 paragraphs, above the accepted 1-55") and
               "--sessions 3" in p and "--length_tolerance 2.5" in p for p in problems), problems
    key = '"experience_and_reflection": "'
    raw_break = json.dumps(good).replace(key, key + "Looking back:\n")  # a raw line break inside a string
    assert check_report("Here it is:\n" + raw_break, SMALL, "en")[0]["experience_and_reflection"].startswith(
        "Looking back: ")
    chinese = {k: (["来访者的情况。" * 20] if isinstance(v, list) else "来访者。" * 20) for k, v in good.items()}
    assert "not written in English" in check_report(json.dumps(chinese), SMALL, "en")[1]


@pytest.mark.parametrize("name, text, match", [
    ("empty.txt", "# only a comment\n\n", "no seeds"),
    ("bad.jsonl", '{"seed": "fine"}\n{"seed": 3}\n', "line 2: expected a string"),
    ("cut.jsonl", '{"seed": "fine"}\n{"seed": "cut\n', "line 2: invalid JSON"),
    ("psyqa.json", '[{"question": "ok"}, {"description": "no question"}]', "item 1: field 'question'"),
    ("notes.json", '{"question": "x"}', "expected a JSON array")])
def test_bad_seeds_files(tmp_path, name, text, match):
    (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=match):
        read_seeds(str(tmp_path / name))


def test_seed_kinds(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps([{"questionID": 12, "question": "我总是失眠", "description": "怎么办"}]),
                                     encoding="utf-8")
    [seed] = read_seeds(str(tmp_path / "q.json"))
    assert seed.origin == "psyqa:12" and seed.text == "我总是失眠 怎么办"
    (tmp_path / "s.jsonl").write_text('"a topic"\n{"seed": "b topic"}\n"a topic"\n', encoding="utf-8")
    assert [s.text for s in read_seeds(str(tmp_path / "s.jsonl"))] == ["a topic", "b topic"]
    assert len(builtin_seeds()) == 160 and len({s.key for s in builtin_seeds()}) == 160


def test_dry_run_prints_the_cost_and_sends_nothing(tmp_path, capsys):
    counts = synthesize_file("builtin", 20, tmp_path / "s.jsonl", None, "en", dry_run=True,
                             official=[official_file(tmp_path)])
    out = capsys.readouterr().out
    assert counts == {"planned": 20, "todo": 20}
    assert "per 1,000 reports" in out and "1,000 requests" in out and "3,000 requests" in out
    assert "| sessions | official | 1 |" in out and not (tmp_path / "s.jsonl").exists()


def test_cli_reports_bad_options_in_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *args, "--output", str(tmp_path / "o.jsonl")],
                              capture_output=True, text=True)

    mistyped = run("--n", "abc")
    assert mistyped.returncode == 2 and mistyped.stderr.startswith("error: --n: expected ")
    assert mistyped.stderr.count("\n") == 1
    out_of_range = run("--concurrency", "0")
    err = out_of_range.stderr.strip()
    assert out_of_range.returncode == 2 and "\n" not in err
    assert "--concurrency: expected an integer >= 1 and <= 256, got 0" in err
    missing = run("--n", "3").stderr.strip()
    assert "\n" not in missing and "--endpoint and --model are required" in missing
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_end_to_end_prints_counts_and_writes_the_histogram(tmp_path):
    seeds = seeds_file(tmp_path, SEEDS[:2])
    with FakeChatServer(teacher) as server:
        result = subprocess.run(
            [sys.executable, str(SCRIPT), "--seeds", str(seeds), "--n", "2", "--endpoint", server.endpoint,
             "--model", "teacher", "--output", str(tmp_path / "s.jsonl"), "--official", str(official_file(tmp_path)),
             "--sessions", "3", "--case_words", "40", "--process_words", "120", "--reflection_words", "50"],
            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "kept 2," in result.stdout and "| total_words | synthetic | 2 |" in result.stdout
    assert (tmp_path / "s.shape.png").read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- labelling synthetic records


def not_described_teacher(messages):
    assert NOT_DESCRIBED in messages[1]["content"]  # the labelling prompt says so
    fields = {f: "来访者的情况，用中文写成的一段话。" for f in GOLD_FIELDS}
    return json.dumps({**fields, "treatment_effect": NOT_DESCRIBED}, ensure_ascii=False)


def test_labelling_keeps_synth_source_and_accepts_not_described(tmp_path):
    seeds = seeds_file(tmp_path, SEEDS[:2])
    with FakeChatServer(teacher) as server:
        synth(server, tmp_path, seeds, n=2)
    labelled = tmp_path / "labelled.jsonl"
    with FakeChatServer(not_described_teacher) as server:
        counts = label_file(tmp_path / "synthetic.jsonl", labelled, client(server), language="zh")
    assert counts["labelled"] == 2 and counts["rejected"] == 0
    records = read_records(labelled, require_gold=True)  # what the trainer reads
    assert all(r.source == SOURCE and r.synth_source["teacher"] == "teacher" for r in records)
    assert all(r.treatment_effect == NOT_DESCRIBED and r.label_source for r in records)
    submission = write_submission(tmp_path / "sub.jsonl", {r.id: r.gold() for r in records}, [r.id for r in records])
    assert check_submission(submission).ok


@pytest.mark.slow
def test_seeds_to_synthetic_reports_to_labels_to_training_to_scored_submission(tmp_path):
    """Issue 13's route end to end: 5 seeds -> 5 synthetic reports -> teacher labels -> cpu-smoke
    training -> predictions on held-out sample reports -> local scores."""
    from emotion_summary.scoring.evaluate import evaluate
    from emotion_summary.data.folds import write_fold
    from emotion_summary.predicting.predict import infer
    from emotion_summary.teacher.label import label_with_teacher
    from emotion_summary.data.sample_data import SAMPLE_EN
    from emotion_summary.training.command import train

    seeds = seeds_file(tmp_path)
    labelled = tmp_path / "labelled.jsonl"
    with FakeChatServer(teacher) as server:
        assert synth(server, tmp_path, seeds)["kept"] == 5
        label_with_teacher(str(tmp_path / "synthetic.jsonl"), str(labelled), endpoint=server.endpoint, model="teacher",
                           language="en")
        assert synth(server, tmp_path, seeds)["kept"] == 0 and len(server.requests) == 10  # rerun: nothing sent
    train_records = read_records(labelled, require_gold=True)
    assert len(train_records) == 5 and {r.source for r in train_records} == {SOURCE}

    run_dir = train(preset="cpu-smoke", train_data=str(labelled), folds=0, max_steps=2,
                    output_dir=str(tmp_path / "run"))
    _, heldout = write_fold(str(SAMPLE_EN), str(tmp_path / "folds"), folds=3, fold=0)
    submission = tmp_path / "Emotion_Summary_Result.jsonl"
    infer(input=heldout, output=str(submission), model_path=run_dir, max_new_tokens=8)
    assert check_submission(submission, heldout).ok
    evaluate(pred=str(submission), gold=heldout, out_dir=str(tmp_path / "scores"), bertscore=False)
    scores = json.loads(next((tmp_path / "scores").glob("*.json")).read_text())
    assert "rouge" in json.dumps(scores).lower()


def _report_with(sessions: int, case: int, process: int, reflection: int) -> str:
    per_session = max(1, process // sessions)
    return json.dumps({"case_description": [" ".join(["client"] * case)],
                       "consultation_process": [" ".join(["session"] * per_session)] * sessions,
                       "experience_and_reflection": " ".join(["reflect"] * reflection)})


@pytest.mark.parametrize("edge", [0, 1], ids=["p5", "p95"])
def test_every_section_length_within_the_official_5th_to_95th_percentile_passes_the_default_gates(edge):
    from emotion_summary.teacher.synthesize import OFFICIAL_RANGE, Targets

    low_high = {k: v[edge] for k, v in OFFICIAL_RANGE.items()}
    reply = _report_with(low_high["sessions"], low_high["case_words"],
                         low_high["process_words"] // low_high["sessions"] * low_high["sessions"],
                         low_high["reflection_words"])
    sections, problems = check_report(reply, Targets(), "en")
    assert sections is not None, problems


@pytest.mark.shared
def test_the_default_gates_pass_most_official_reports(shared_data):
    from emotion_summary.data.records import read_records
    from emotion_summary.teacher.synthesize import Targets

    official = read_records(shared_data / "longemotion" / "Emotion_Summary.jsonl")
    passed = sum(check_report(json.dumps({"case_description": list(r.case_description),
                                          "consultation_process": list(r.consultation_process),
                                          "experience_and_reflection": r.experience_and_reflection}),
                              Targets(), "en")[0] is not None for r in official)
    assert passed >= 0.8 * len(official), passed  # each gate alone passes 90%; they overlap
