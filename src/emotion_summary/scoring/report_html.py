"""One self-contained HTML page of an evaluation, to check a run's facts against the source.

Per report: the five fields beside the gold (hard-wrapped gold joined into flowing text), per-field
scores, fields the run took from the extractive fallback marked, and the full source report in a
collapsible block where the passages a run's prediction shares with it are highlighted. On top: every
metric's mean per run and its Δ against the first run, as a table and a chart. Search (ids and text),
a field filter, and sorting by any metric (worst first, by id, biggest drop) work on every report.

No server and no external asset: CSS, JS and the chart (SVG) are inline, so the file opens offline.
Every text from a report or a model is HTML-escaped; the script reads numbers from data-attributes
and text only through `textContent` (for search), and never writes HTML, so a report holding
`</script>` or `<img onerror=...>` stays plain text.
"""

from __future__ import annotations

import re
from html import escape
from typing import Mapping, Sequence

from emotion_summary.data.records import GOLD_FIELDS

FIELD_TITLES = {"causes": "Causes", "symptoms": "Symptoms", "treatment_process": "Treatment process",
                "characteristics_of_illness": "Characteristics of illness",
                "treatment_effect": "Treatment effect"}
METRIC_NAMES = {"rouge-1": "ROUGE-1 F1", "rouge-2": "ROUGE-2 F1", "rouge-l": "ROUGE-L F1",
                "bertscore": "BERTScore F1", "judge": "judge (1-5)"}
SORT_METRIC = "rouge-l"
# Shared runs of this many tokens are highlighted in the source: 4 words, or 6 CJK characters.
HIGHLIGHT_TOKENS = {"latin": 4, "cjk": 6}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC",sans-serif;margin:0;
 color:#1d2330;background:#f4f6f9}
header{background:#24344d;color:#fff;padding:14px 22px}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;color:#d5dceb;font-size:13px}
main{padding:12px 22px 40px}
.controls{position:sticky;top:0;background:#f4f6f9;padding:8px 0;z-index:2;display:flex;gap:18px;
 flex-wrap:wrap;align-items:center;border-bottom:1px solid #d8dde6}
select,input{font-size:14px;padding:2px 6px}
table{border-collapse:collapse}
.summary{margin:6px 0 10px}
.summary td,.summary th{border:1px solid #d8dde6;padding:3px 10px;text-align:right;background:#fff}
.summary th:first-child,.summary td:first-child{text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.charts svg{background:#fff;border:1px solid #d8dde6;border-radius:4px}
.report{background:#fff;border:1px solid #d8dde6;border-radius:6px;margin:14px 0;padding:8px 12px}
.report h2{font-size:16px;margin:4px 0 8px}
.report h2 .score{font-weight:normal;font-size:13px;margin-left:10px}
.fields{width:100%;table-layout:fixed}
.fields th,.fields td{border-top:1px solid #e6e9ef;padding:6px 8px;vertical-align:top;text-align:left}
.fields th.name{width:11em}
.text{white-space:pre-wrap;word-wrap:break-word}
.gold{background:#f7f9fc}
.scores{font-size:12px;color:#566074;margin-top:4px}
.fallback{display:inline-block;font-size:11px;background:#fde7c4;color:#7a4a00;border-radius:3px;padding:0 5px;
 margin-bottom:3px}
.bad{color:#b3261e;font-weight:600}.mid{color:#8a5a00;font-weight:600}.good{color:#1e7b34;font-weight:600}
.delta{font-size:12px;margin-left:6px}
details{margin:4px 0 6px;color:#3a4353}
details.source .body{font-size:13px;max-height:30em;overflow:auto;background:#fafbfd;padding:6px 10px}
details.source h3{font-size:13px;margin:8px 0 2px;color:#24344d}
details.source p{margin:2px 0 6px;white-space:pre-wrap}
mark.m0{background:#fff0a8}mark.m1{background:#c9ecff}mark.m01{background:#d7f5c4}
.legend mark{padding:0 4px}
.hidden{display:none}
"""

# Sorting and filtering read numbers from data-attributes (data-v-<metric>-<system>-<field>); search
# reads text through textContent only.
JS = """
(function(){
  var list=document.getElementById('reports');
  var sortSel=document.getElementById('sort'), fieldSel=document.getElementById('field');
  var metricSel=document.getElementById('metric'), search=document.getElementById('q');
  var reports=Array.prototype.slice.call(list.querySelectorAll('.report'));
  var haystack=reports.map(function(r){return ('report '+r.getAttribute('data-id')+' '+r.textContent).toLowerCase();});
  function id(el){return parseInt(el.getAttribute('data-id'));}
  function score(el,sys,field){
    var v=parseFloat(el.getAttribute('data-v-'+metricSel.value+'-'+sys+'-'+field));
    return isNaN(v)?Infinity:v;
  }
  function delta(el,field){
    var d=score(el,1,field)-score(el,0,field);
    return isFinite(d)?d:Infinity;
  }
  function apply(){
    var field=fieldSel.value, how=sortSel.value, q=search.value.trim().toLowerCase(), shown=0;
    reports.forEach(function(r,i){
      var hit=!q || haystack[i].indexOf(q)>=0;
      r.classList.toggle('hidden',!hit); if(hit) shown++;
      r.querySelectorAll('tr[data-field]').forEach(function(row){
        row.classList.toggle('hidden', field!=='mean' && row.getAttribute('data-field')!==field);
      });
    });
    var order=reports.slice().sort(function(a,b){
      if(how==='id') return id(a)-id(b);
      if(how==='delta') return delta(a,field)-delta(b,field) || id(a)-id(b);
      var s=parseInt(how.slice(5));
      return score(a,s,field)-score(b,s,field) || id(a)-id(b);
    });
    order.forEach(function(r){list.appendChild(r);});
    document.getElementById('count').textContent=shown+' of '+reports.length+' reports';
    document.body.setAttribute('data-shown', shown);
  }
  // #field=causes&order=delta&metric=judge&q=panic in the address selects a view (a link to it can be shared).
  location.hash.slice(1).split('&').forEach(function(kv){
    var p=kv.split('='), value=decodeURIComponent(p[1]||'');
    if(p[0]==='q'){search.value=value;return;}
    var sel={field:fieldSel,order:sortSel,metric:metricSel}[p[0]];
    if(sel) Array.prototype.forEach.call(sel.options,function(o){if(o.value===value) sel.value=value;});
  });
  [sortSel,fieldSel,metricSel].forEach(function(s){s.addEventListener('change',apply);});
  search.addEventListener('input',apply); apply();
})();
"""


# ---------------------------------------------------------------- text helpers

_SENTENCE_END = ".!?;:。！？；：…\"'”’)）】"
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"


def unwrap(text: str) -> str:
    """Hard-wrapped text as flowing text: a single line break inside a sentence becomes a space (no
    space between CJK characters); breaks after a sentence's end, before a list item, and blank lines
    stay."""
    def join(m: re.Match) -> str:
        before, after = m.group(1), m.group(2)
        if before in _SENTENCE_END or after in "-•*":
            return "\n"
        return "" if re.match(f"[{_CJK}]", before) and re.match(f"[{_CJK}]", after) else " "

    return re.sub(r"(?<=(\S))[ \t]*\n[ \t]*(?=(\S))", join, text)


_WORD = re.compile(rf"[{_CJK}]|[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)


def _tokens(text: str) -> list[tuple[int, int, str]]:
    """(start, end, lower-cased token): words, or single CJK characters."""
    return [(m.start(), m.end(), m.group(0).casefold()) for m in _WORD.finditer(text)]


def _ngram_size(toks: list[tuple[int, int, str]]) -> int:
    cjk = sum(1 for *_, t in toks if len(t) == 1 and re.match(f"[{_CJK}]", t))
    return HIGHLIGHT_TOKENS["cjk" if cjk * 2 > len(toks) else "latin"]


def shared_marks(source: str, predictions: Sequence[str]) -> list[tuple[int, int, frozenset[int]]]:
    """Spans (start, end, runs) of `source` that lie in a run of n tokens also found in prediction i
    (for each i in runs): the passages a prediction copied or paraphrased closely."""
    toks = _tokens(source)
    if not toks:
        return []
    n = _ngram_size(toks)
    grams = [{tuple(t for *_, t in ptoks[i:i + n]) for i in range(len(ptoks) - n + 1)}
             for ptoks in (_tokens(p) for p in predictions)]
    covered: list[set[int]] = [set() for _ in toks]
    for i in range(len(toks) - n + 1):
        gram = tuple(t for *_, t in toks[i:i + n])
        for run, have in enumerate(grams):
            if gram in have:
                for k in range(i, i + n):
                    covered[k].add(run)
    spans: list[tuple[int, int, frozenset[int]]] = []
    for (start, end, _), runs in zip(toks, covered):
        if not runs:
            continue
        if spans and spans[-1][2] == frozenset(runs) and not source[spans[-1][1]:start].strip(" \t,;:-"):
            spans[-1] = (spans[-1][0], end, spans[-1][2])  # extend over the gap between two marked words
        else:
            spans.append((start, end, frozenset(runs)))
    return spans


def highlighted(source: str, predictions: Sequence[str]) -> str:
    """`source` escaped, with the shared passages in <mark class="m0|m1|m01">."""
    out, at = [], 0
    for start, end, runs in shared_marks(source, predictions):
        out.append(escape(source[at:start]))
        out.append(f'<mark class="m{"".join(map(str, sorted(runs)))}">{escape(source[start:end])}</mark>')
        at = end
    out.append(escape(source[at:]))
    return "".join(out)


# ---------------------------------------------------------------- scores


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


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


def _by_id(table: Mapping, rid: int) -> Mapping:
    return table.get(rid) or table.get(str(rid)) or {}


def _report_scores(system: dict, rid: int) -> dict[str, dict[str, float]]:
    """{field: {"rouge-1": .., "rouge-2": .., "rouge-l": .., "bertscore": .., "judge": ..}} for one report."""
    rouge = _by_id(system["rouge"]["per_id"], rid)
    bert = _by_id((system.get("bertscore") or {}).get("per_id") or {}, rid)
    judged = _by_id((system.get("judge") or {}).get("per_id") or {}, rid)
    return {f: {**rouge.get(f, {}), **({"bertscore": bert[f]} if f in bert else {}),
                **({"judge": judged[f]} if f in judged else {})} for f in GOLD_FIELDS}


def _field_mean(scores: Mapping[str, Mapping[str, float]], metric: str) -> float | None:
    values = [scores[f][metric] for f in GOLD_FIELDS if scores[f].get(metric) is not None]
    return sum(values) / len(values) if values else None


def _value(scores, field: str, metric: str) -> float | None:
    return _field_mean(scores, metric) if field == "mean" else scores[field].get(metric)


def metrics_of(systems: Sequence[dict]) -> list[str]:
    """The metrics every run has: ROUGE always, BERTScore and the judge when they ran."""
    extra = [m for m in ("bertscore", "judge") if all((s.get(m) or {}).get("mean") is not None for s in systems)]
    return ["rouge-1", "rouge-2", "rouge-l", *extra]


def run_mean(system: dict, metric: str, field: str = "mean") -> float | None:
    """A run's mean of `metric` over all reports (the judge's "mean" is the ES score)."""
    if metric.startswith("rouge"):
        r = system["rouge"]
        return (r["mean"] if field == "mean" else r["per_field"].get(field, {})).get(metric)
    section = system.get(metric) or {}
    if field == "mean":
        return section.get("mean")
    value = (section.get("per_field") or {}).get(field)
    return value.get("mean") if isinstance(value, dict) else value


def filled_fields(system: dict, rid: int) -> list[str]:
    return list(_by_id(system.get("filled") or {}, rid))


# ---------------------------------------------------------------- page parts


def _score_line(scores: Mapping[str, float]) -> str:
    parts = [f"R-1 {_fmt(scores.get('rouge-1'))}", f"R-2 {_fmt(scores.get('rouge-2'))}",
             f"<span class=\"{_grade(scores.get('rouge-l'), 1.0)}\">R-L {_fmt(scores.get('rouge-l'))}</span>"]
    if "bertscore" in scores:
        parts.append(f"BERTScore {_fmt(scores['bertscore'])}")
    if "judge" in scores:
        parts.append(f"<span class=\"{_grade(scores['judge'] - 1, 4.0)}\">judge {scores['judge']:.2f}/5</span>")
    return " · ".join(parts)


def _delta(first: float | None, second: float | None) -> str:
    if first is None or second is None:
        return ""
    d = second - first
    cls = "good" if d > 0.005 else "bad" if d < -0.005 else ""
    return f'<span class="delta {cls}">Δ {d:+.3f}</span>'


def _source_block(rid: int, systems: Sequence[dict], sections: Sequence[tuple[str, str]]) -> str:
    predictions = [" \n ".join(s["_preds"][rid].values()) for s in systems]
    body, last = [], None
    for heading, text in sections:
        if heading != last:
            body.append(f"<h3>{escape(heading)}</h3>")
            last = heading
        body.append(f"<p>{highlighted(text, predictions)}</p>")
    chars = sum(len(t) for _, t in sections)
    return (f'<details class="source"><summary>source report ({len(sections)} paragraphs, {chars:,} characters; '
            f'highlighted: passages the prediction shares)</summary><div class="body">{"".join(body)}</div></details>')


def _report_section(rid: int, systems: Sequence[dict], metrics: Sequence[str], gold: Mapping[str, str] | None,
                    sections: Sequence[tuple[str, str]] | None) -> str:
    scores = [_report_scores(s, rid) for s in systems]
    attrs = [f'data-id="{rid}"']
    for i, sc in enumerate(scores):
        attrs += [f'data-v-{m}-{i}-{f}="{v:.6f}"' for m in metrics for f in (*GOLD_FIELDS, "mean")
                  if (v := _value(sc, f, m)) is not None]
    means = [_field_mean(sc, SORT_METRIC) for sc in scores]
    head = " ".join(f'<span class="score">{escape(s["label"])}: mean R-L '
                    f'<span class="{_grade(m, 1.0)}">{_fmt(m)}</span></span>' for s, m in zip(systems, means))
    if len(systems) == 2:
        head += _delta(*means)
    rows = []
    for f in GOLD_FIELDS:
        cells = [f'<th class="name">{escape(FIELD_TITLES[f])}</th>']
        if gold is not None:
            cells.append(f'<td class="gold"><div class="text">{escape(unwrap(gold[f]))}</div></td>')
        for i, s in enumerate(systems):
            extra = _delta(scores[0][f].get(SORT_METRIC), scores[1][f].get(SORT_METRIC)) if i == 1 else ""
            badge = ('<span class="fallback" title="the model gave no text for this field; the extractive '
                     'baseline filled it">extractive fallback</span>' if f in filled_fields(s, rid) else "")
            cells.append(f'<td>{badge}<div class="text">{escape(s["_preds"][rid][f])}</div>'
                         f'<div class="scores">{_score_line(scores[i][f])}{extra}</div></td>')
        rows.append(f'<tr data-field="{f}">{"".join(cells)}</tr>')
    column_heads = ['<th class="name">field</th>'] + (['<th>gold</th>'] if gold is not None else [])
    column_heads += [f"<th>{escape(s['label'])}</th>" for s in systems]
    source = _source_block(rid, systems, sections) if sections else ""
    return (f'<section class="report" {" ".join(attrs)}><h2>Report {rid}{head}</h2>{source}'
            f'<table class="fields"><tr>{"".join(column_heads)}</tr>{"".join(rows)}</table></section>')


def _means_table(systems: Sequence[dict], metrics: Sequence[str], n_reports: int) -> str:
    """Every metric's mean per run, with each later run's Δ against the first; fallback counts."""
    head = "<tr><th>mean over reports</th>" + "".join(f"<th>{escape(s['label'])}</th>" for s in systems)
    head += "".join(f"<th>Δ {escape(s['label'])} − {escape(systems[0]['label'])}</th>" for s in systems[1:]) + "</tr>"
    rows = []
    for m in metrics:
        values = [run_mean(s, m) for s in systems]
        cells = [f"<td>{_fmt(v, 4)}</td>" for v in values]
        cells += [f"<td>{_delta(values[0], v) or '–'}</td>" for v in values[1:]]
        rows.append(f"<tr><td>{escape(METRIC_NAMES[m])}</td>{''.join(cells)}</tr>")
    fills = []
    for s in systems:
        n = sum(len(v) for v in (s.get("filled") or {}).values())
        fills.append(f"<td>{n} of {5 * n_reports} ({100 * n / max(1, 5 * n_reports):.0f}%)</td>" if "filled" in s
                     else "<td>not recorded</td>")
    rows.append(f"<tr><td>fields from the extractive fallback</td>{''.join(fills)}{'<td></td>' * (len(systems) - 1)}</tr>")
    return f'<table class="summary">{head}{"".join(rows)}</table>'


def _field_table(systems: Sequence[dict], metric: str) -> str:
    head = f"<tr><th>{escape(METRIC_NAMES[metric])} per field</th>"
    head += "".join(f"<th>{escape(s['label'])}</th>" for s in systems) + "</tr>"
    rows = []
    for f in GOLD_FIELDS:
        values = [run_mean(s, metric, f) for s in systems]
        cells = "".join(f"<td>{_fmt(v)}{_delta(values[0], v) if i else ''}</td>" for i, v in enumerate(values))
        rows.append(f"<tr><td>{escape(FIELD_TITLES[f])}</td>{cells}</tr>")
    return f'<table class="summary">{head}{"".join(rows)}</table>'


COLORS = ("#3b6fb6", "#e0902f", "#4a9a5b", "#a04a9a")


def _chart(systems: Sequence[dict], metric: str) -> str:
    """An SVG bar chart of one metric's mean per run: the axis runs to just above the largest value,
    every bar carries its value."""
    values = [run_mean(s, metric) or 0.0 for s in systems]
    top = max(values) * 1.18 or 1.0
    width, height, left, base = 60 + 70 * len(systems), 170, 10, 140
    bars = []
    for i, (s, v) in enumerate(zip(systems, values)):
        h = (base - 20) * v / top
        x = left + 20 + i * 70
        bars.append(f'<rect x="{x}" y="{base - h:.1f}" width="44" height="{h:.1f}" fill="{COLORS[i % len(COLORS)]}">'
                    f'<title>{escape(s["label"])}: {v:.4f}</title></rect>'
                    f'<text x="{x + 22}" y="{base - h - 4:.1f}" text-anchor="middle" font-size="11">{v:.3f}</text>'
                    f'<text x="{x + 22}" y="{base + 14}" text-anchor="middle" font-size="10">'
                    f'{escape(s["label"][:12])}</text>')
    return (f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(METRIC_NAMES[metric])}">'
            f'<text x="8" y="14" font-size="12" font-weight="600">{escape(METRIC_NAMES[metric])}</text>'
            f'<line x1="{left + 10}" y1="{base}" x2="{width - 6}" y2="{base}" stroke="#888"/>{"".join(bars)}</svg>')


def _controls(systems: Sequence[dict], metrics: Sequence[str]) -> str:
    fields = "".join(f'<option value="{f}">{escape(FIELD_TITLES[f])}</option>' for f in GOLD_FIELDS)
    sorts = "".join(f'<option value="worst{i}">worst first ({escape(s["label"])})</option>'
                    for i, s in enumerate(systems))
    if len(systems) == 2:
        sorts += '<option value="delta">biggest drop (2nd − 1st) first</option>'
    sorts += '<option value="id">by id</option>'
    metric_options = "".join(f'<option value="{m}"{" selected" if m == SORT_METRIC else ""}>{escape(METRIC_NAMES[m])}'
                             f'</option>' for m in metrics)
    legend = "".join(f'<mark class="m{i}">{escape(s["label"])}</mark> ' for i, s in enumerate(systems))
    if len(systems) == 2:
        legend += '<mark class="m01">both</mark>'
    return (f'<div class="controls"><label>search <input id="q" type="search" placeholder="id or words"></label>'
            f'<label>field <select id="field"><option value="mean">all fields (sort by mean)</option>{fields}'
            f'</select></label><label>order <select id="sort">{sorts}</select></label>'
            f'<label>by <select id="metric">{metric_options}</select></label><span id="count"></span>'
            f'<span class="legend">shared with the source: {legend}</span></div>')


def render_html(results: dict, golds: Mapping[int, Mapping[str, str]] | None = None,
                sources: Mapping[int, Sequence[tuple[str, str]]] | None = None) -> str:
    """The page for `results` as evaluate builds them (systems carry `_preds`, `rouge` with `per_id`,
    optionally `bertscore`/`judge` with `per_id` and `filled` {id: fields from the fallback}). `golds`
    and `sources` ((heading, paragraph) pairs of the report) are optional per id."""
    systems = results["systems"]
    metrics = metrics_of(systems)
    ids = [int(i) for i in results["ids"]]
    first_means = {rid: _field_mean(_report_scores(systems[0], rid), SORT_METRIC) for rid in ids}
    worst_first = sorted(ids, key=lambda rid: (first_means[rid] is None, first_means[rid] or 0.0, rid))
    sections = "\n".join(_report_section(rid, systems, metrics, (golds or {}).get(rid), (sources or {}).get(rid))
                         for rid in worst_first)
    title = " vs ".join(s["label"] for s in systems) + " · ES evaluation"
    origins = "".join(f"<p>{escape(s['label'])}: {escape(str(s['pred']))}</p>" for s in systems)
    notes = "".join(f"<p>{escape(n)}</p>" for n in results.get("notes", []))
    charts = "".join(_chart(systems, m) for m in metrics)
    tables = _means_table(systems, metrics, len(ids)) + _field_table(systems, SORT_METRIC)
    if "judge" in metrics:
        tables += _field_table(systems, "judge")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><p>gold: {escape(str(results['gold']))} "
            f"({len(ids)} reports)</p>{origins}{notes}</header><main>{tables}<div class=\"charts\">{charts}</div>"
            f'{_controls(systems, metrics)}<div id="reports">\n{sections}\n</div></main>'
            f"<script>{JS}</script></body></html>\n")
