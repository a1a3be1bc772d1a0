"""One self-contained HTML page of an evaluation: every report's five fields beside the gold, with
per-field scores, worst reports first, a field filter, and two runs side by side.

No server and no external asset: CSS and JS are inline, so the file opens offline from disk. Every
text from a report or a model is HTML-escaped; the script reads only numbers from data-attributes,
never report text, so a report holding `</script>` or `<img onerror=...>` stays plain text.
"""

from __future__ import annotations

from html import escape
from typing import Mapping, Sequence

from emotion_summary.data.records import GOLD_FIELDS

FIELD_TITLES = {"causes": "Causes", "symptoms": "Symptoms", "treatment_process": "Treatment process",
                "characteristics_of_illness": "Characteristics of illness",
                "treatment_effect": "Treatment effect"}
SORT_METRIC = "rouge-l"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC",sans-serif;margin:0;
 color:#1d2330;background:#f4f6f9}
header{background:#24344d;color:#fff;padding:14px 22px}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#d5dceb;font-size:13px}
main{padding:12px 22px 40px}
.controls{position:sticky;top:0;background:#f4f6f9;padding:8px 0;z-index:2;display:flex;gap:18px;
 flex-wrap:wrap;align-items:center;border-bottom:1px solid #d8dde6}
select{font-size:14px;padding:2px 6px}
table{border-collapse:collapse}
.summary td,.summary th{border:1px solid #d8dde6;padding:3px 10px;text-align:right;background:#fff}
.summary th:first-child,.summary td:first-child{text-align:left}
.report{background:#fff;border:1px solid #d8dde6;border-radius:6px;margin:14px 0;padding:8px 12px}
.report h2{font-size:16px;margin:4px 0 8px}
.report h2 .score{font-weight:normal;font-size:13px;margin-left:10px}
.fields{width:100%;table-layout:fixed}
.fields th,.fields td{border-top:1px solid #e6e9ef;padding:6px 8px;vertical-align:top;text-align:left}
.fields th.name{width:11em}
.text{white-space:pre-wrap;word-wrap:break-word}
.gold{background:#f7f9fc}
.scores{font-size:12px;color:#566074;margin-top:4px}
.bad{color:#b3261e;font-weight:600}.mid{color:#8a5a00;font-weight:600}.good{color:#1e7b34;font-weight:600}
.delta{font-size:12px;margin-left:6px}
details{margin:4px 0 6px;color:#3a4353}
details .text{font-size:13px;max-height:16em;overflow:auto;background:#fafbfd;padding:6px}
.hidden{display:none}
"""

# Sorting and filtering read only numbers from data-attributes (data-s<system>-<field>).
JS = """
(function(){
  var list=document.getElementById('reports');
  var sortSel=document.getElementById('sort'), fieldSel=document.getElementById('field');
  function score(el,sys,field){
    var v=parseFloat(el.getAttribute('data-s'+sys+'-'+field));
    return isNaN(v)?Infinity:v;
  }
  function delta(el,field){
    var d=score(el,1,field)-score(el,0,field);
    return isFinite(d)?d:Infinity;
  }
  function apply(){
    var field=fieldSel.value, how=sortSel.value;
    var reports=Array.prototype.slice.call(list.querySelectorAll('.report'));
    reports.forEach(function(r){
      r.querySelectorAll('tr[data-field]').forEach(function(row){
        row.classList.toggle('hidden', field!=='mean' && row.getAttribute('data-field')!==field);
      });
    });
    reports.sort(function(a,b){
      if(how==='id') return parseInt(a.getAttribute('data-id'))-parseInt(b.getAttribute('data-id'));
      if(how==='delta') return delta(a,field)-delta(b,field);
      var s=parseInt(how.slice(5));
      return score(a,s,field)-score(b,s,field) ||
             parseInt(a.getAttribute('data-id'))-parseInt(b.getAttribute('data-id'));
    });
    reports.forEach(function(r){list.appendChild(r);});
    document.body.setAttribute('data-shown', reports.length);
  }
  // #field=causes&order=delta in the address selects a view (a link to it can be shared).
  location.hash.slice(1).split('&').forEach(function(kv){
    var p=kv.split('='), sel=p[0]==='field'?fieldSel:p[0]==='order'?sortSel:null;
    if(sel && sel.querySelector('option[value="'+p[1]+'"]')) sel.value=p[1];
  });
  sortSel.addEventListener('change',apply); fieldSel.addEventListener('change',apply); apply();
})();
"""


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _grade(value: float | None, top: float) -> str:
    if value is None:
        return ""
    share = value / top
    return "bad" if share < 0.2 else "mid" if share < 0.4 else "good"


def per_id_judge(items) -> dict[int, dict[str, float]]:
    """{id: {field: mean of the judge's criteria}} from judge items (failed items left out)."""
    out: dict[int, dict[str, float]] = {}
    for it in items:
        if it.scores:
            out.setdefault(it.id, {})[it.field] = sum(it.scores.values()) / len(it.scores)
    return out


def _report_scores(system: dict, rid: int) -> dict[str, dict[str, float]]:
    """{field: {"rouge-1": .., "rouge-2": .., "rouge-l": .., "judge": ..}} for one report."""
    rouge = system["rouge"]["per_id"].get(rid) or system["rouge"]["per_id"].get(str(rid)) or {}
    judge = (system.get("judge") or {}).get("per_id") or {}
    judged = judge.get(rid) or judge.get(str(rid)) or {}
    return {f: {**rouge.get(f, {}), **({"judge": judged[f]} if f in judged else {})} for f in GOLD_FIELDS}


def _sort_value(scores: Mapping[str, Mapping[str, float]], field: str) -> float | None:
    if field == "mean":
        values = [scores[f].get(SORT_METRIC) for f in GOLD_FIELDS]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None
    return scores[field].get(SORT_METRIC)


def _score_line(scores: Mapping[str, float]) -> str:
    parts = [f"R-1 {_fmt(scores.get('rouge-1'))}", f"R-2 {_fmt(scores.get('rouge-2'))}",
             f"<span class=\"{_grade(scores.get('rouge-l'), 1.0)}\">R-L {_fmt(scores.get('rouge-l'))}</span>"]
    if "judge" in scores:
        parts.append(f"<span class=\"{_grade(scores['judge'] - 1, 4.0)}\">judge {scores['judge']:.2f}/5</span>")
    return " · ".join(parts)


def _delta(first: float | None, second: float | None) -> str:
    if first is None or second is None:
        return ""
    d = second - first
    cls = "good" if d > 0.005 else "bad" if d < -0.005 else ""
    return f'<span class="delta {cls}">Δ {d:+.3f}</span>'


def _report_section(rid: int, systems: Sequence[dict], gold: Mapping[str, str] | None,
                    context: str | None) -> str:
    scores = [_report_scores(s, rid) for s in systems]
    attrs = [f'data-id="{rid}"']
    for i, sc in enumerate(scores):
        attrs += [f'data-s{i}-{f}="{v:.6f}"' for f in (*GOLD_FIELDS, "mean")
                  if (v := _sort_value(sc, f)) is not None]
    means = [_sort_value(sc, "mean") for sc in scores]
    head = " ".join(f'<span class="score">{escape(s["label"])}: mean R-L '
                    f'<span class="{_grade(m, 1.0)}">{_fmt(m)}</span></span>' for s, m in zip(systems, means))
    if len(systems) == 2:
        head += _delta(*means)
    rows = []
    for f in GOLD_FIELDS:
        cells = [f'<th class="name">{escape(FIELD_TITLES[f])}</th>']
        if gold is not None:
            cells.append(f'<td class="gold"><div class="text">{escape(gold[f])}</div></td>')
        for i, s in enumerate(systems):
            extra = _delta(scores[0][f].get(SORT_METRIC), scores[1][f].get(SORT_METRIC)) if i == 1 else ""
            cells.append(f'<td><div class="text">{escape(s["_preds"][rid][f])}</div>'
                         f'<div class="scores">{_score_line(scores[i][f])}{extra}</div></td>')
        rows.append(f'<tr data-field="{f}">{"".join(cells)}</tr>')
    column_heads = ['<th class="name">field</th>'] + (['<th>gold</th>'] if gold is not None else [])
    column_heads += [f"<th>{escape(s['label'])}</th>" for s in systems]
    details = (f'<details><summary>report text (case description)</summary><div class="text">'
               f'{escape(context)}</div></details>' if context else "")
    return (f'<section class="report" {" ".join(attrs)}><h2>Report {rid}{head}</h2>{details}'
            f'<table class="fields"><tr>{"".join(column_heads)}</tr>{"".join(rows)}</table></section>')


def _summary_table(systems: Sequence[dict]) -> str:
    has_judge = all((s.get("judge") or {}).get("per_field") for s in systems)
    head = "<tr><th>mean ROUGE-L F1" + (" / judge (1-5)" if has_judge else "") + "</th>"
    head += "".join(f"<th>{escape(s['label'])}</th>" for s in systems) + "</tr>"
    rows = []
    for key in (*GOLD_FIELDS, "mean"):
        cells = []
        for s in systems:
            value = s["rouge"]["mean" if key == "mean" else "per_field"]
            value = value[SORT_METRIC] if key == "mean" else value[key][SORT_METRIC]
            text = _fmt(value)
            if has_judge:
                j = s["judge"]["mean"] if key == "mean" else s["judge"]["per_field"][key]["mean"]
                text += f" / {'–' if j is None else f'{j:.2f}'}"
            cells.append(f"<td>{text}</td>")
        name = "<b>mean</b>" if key == "mean" else escape(FIELD_TITLES[key])
        rows.append(f"<tr><td>{name}</td>{''.join(cells)}</tr>")
    return f'<table class="summary">{head}{"".join(rows)}</table>'


def _controls(systems: Sequence[dict]) -> str:
    fields = "".join(f'<option value="{f}">{escape(FIELD_TITLES[f])}</option>' for f in GOLD_FIELDS)
    sorts = "".join(f'<option value="worst{i}">worst first ({escape(s["label"])})</option>'
                    for i, s in enumerate(systems))
    if len(systems) == 2:
        sorts += '<option value="delta">biggest drop (2nd − 1st) first</option>'
    sorts += '<option value="id">by id</option>'
    return (f'<div class="controls"><label>field <select id="field"><option value="mean">all fields '
            f'(sort by mean)</option>{fields}</select></label><label>order <select id="sort">{sorts}'
            f'</select></label><span>sorted by ROUGE-L F1</span></div>')


def render_html(results: dict, golds: Mapping[int, Mapping[str, str]] | None = None,
                contexts: Mapping[int, str] | None = None) -> str:
    """The page for `results` as evaluate builds them (systems carry `_preds`, `rouge` with
    `per_id`, optionally `judge` with `per_id`). `golds` and `contexts` are optional per id."""
    systems = results["systems"]
    ids = [int(i) for i in results["ids"]]
    first_means = {rid: _sort_value(_report_scores(systems[0], rid), "mean") for rid in ids}
    worst_first = sorted(ids, key=lambda rid: (first_means[rid] is None, first_means[rid] or 0.0, rid))
    sections = "\n".join(_report_section(rid, systems, (golds or {}).get(rid), (contexts or {}).get(rid))
                         for rid in worst_first)
    title = "ES evaluation: " + " vs ".join(s["label"] for s in systems)
    sources = "".join(f"<p>{escape(s['label'])}: {escape(str(s['pred']))}</p>" for s in systems)
    notes = "".join(f"<p>{escape(n)}</p>" for n in results.get("notes", []))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><p>gold: {escape(str(results['gold']))} "
            f"({len(ids)} reports)</p>{sources}{notes}</header><main>{_summary_table(systems)}"
            f'{_controls(systems)}<div id="reports">\n{sections}\n</div></main>'
            f"<script>{JS}</script></body></html>\n")
