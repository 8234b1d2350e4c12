"""Reports of the evaluation harness: results.json, results.csv, report.md and a self-contained report.html.

- results.json: everything `score_folders` / `run_eval` computed (settings, models, per-clip and per-prompt
  values, skipped clips, warnings, metrics that could not be computed and why).
- results.csv: one row per metric: metric, value, model, embedding (the model that metric used), n, time_s, note.
- report.md and report.html: the metric table, what was not computed, warnings, label accuracy of both
  label classifiers (CLAP features; hand-crafted features) side by side with the clips where they disagree, and
  matplotlib plots: CLAP score per prompt, the FAD-inf fit, and the worst clips by per-clip FAD with their
  mel spectrograms; with a training index, the novelty section: the distribution of each clip's
  similarity to its nearest training clip, the plagiarism rate, and per clip the nearest training clip
  (file + caption) beside its text-audio CLAP score. The PNGs are written to plots/ (linked from
  report.md) and embedded as base64 in report.html, which therefore needs no other file.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CSV_COLUMNS = ("metric", "value", "model", "embedding", "n", "time_s", "note")
WORST_CLIPS = 5
NOVELTY_ROWS = 100  # per-clip novelty rows in report.md/.html (most similar first); results.json has all
NOVELTY_PRINTED = 5  # ... and in the printed table
DISAGREEMENT_ROWS = 50  # clips where the two label classifiers disagree, in report.md/.html; results.json has all


def metric_model(results: dict[str, Any], metric: str) -> str:
    """The model behind a metric: the embedding (FAD), the CLAP (CLAP score), the classifier (KL, IS, labels)."""
    if metric.startswith("fad"):
        return str(results.get("embedding", {}).get("name", ""))
    if metric.startswith("clap_score"):
        return str(results.get("clap_model", {}).get("name", ""))
    if metric.startswith(("kl_", "inception")):
        return str(results.get("classifier", {}).get("name", ""))
    if metric.startswith("label_accuracy"):
        return "soundsmith-labels"
    if metric.startswith("feature_label_accuracy"):
        return "soundsmith-feature-labels"
    if metric == "label_disagreement":
        return "soundsmith-labels vs soundsmith-feature-labels"
    if metric.startswith(("novelty", "plagiarism")):
        return str(results.get("novelty", {}).get("index", {}).get("embedder", ""))
    return ""


def format_metric_table(results: dict[str, Any]) -> str:
    """The metrics as a printable table, then what was not computed and why."""
    clips = results.get("clips", {})
    lines = [f"{results.get('model', '')}: {clips.get('generated', '?')} generated clips "
             f"({clips.get('generated_skipped', 0)} skipped) vs {clips.get('reference', '?')} reference clips",
             f"{'metric':<28}{'value':>12}{'n':>8}  model"]
    for m in results["metrics"]:
        lines.append(f"{m['metric']:<28}{m['value']:>12.4f}{m['n']:>8}  {metric_model(results, m['metric'])}")
    for m in results.get("not_computed", []):
        lines.append(f"{m['metric']:<28}{'-':>12}{'':>8}  not computed: {m['reason']}")
    dis = results.get("label_disagreement")
    if dis:
        lines.append(f"label classifiers disagree on {dis['all']['differ']} of {dis['all']['n']} labelled clips: "
                     + ", ".join(f"{f} {m['differ']}/{m['n']}" for f, m in dis["per_family"].items()))
    nov = results.get("novelty")
    if nov:
        lines.append(f"novelty: {nov['above_threshold']} of {nov['n']} clips at or above similarity "
                     f"{nov['threshold']:g} to a training clip; most similar:")
        for c in novelty_rows(results)[:NOVELTY_PRINTED]:
            clap = f"{c['clap_score']:.3f}" if isinstance(c.get("clap_score"), float) else "-"
            lines.append(f"  {c['novelty_similarity']:.3f}  {Path(c['file']).name} ~ {c['nearest_train_file']} "
                         f"({c.get('nearest_train_caption') or ''}); CLAP score {clap}")
    return "\n".join(lines)


def novelty_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-clip rows with a nearest training clip, most similar first."""
    rows = [c for c in results.get("per_clip", []) if isinstance(c.get("novelty_similarity"), float)]
    return sorted(rows, key=lambda c: -c["novelty_similarity"])


def write_report(results: dict[str, Any], out: str | os.PathLike) -> dict[str, Path]:
    """Write results.json, results.csv, plots/*.png, report.md and report.html into `out`; return the paths."""
    from soundsmith.core.files import write_json, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out / "results.json", results)}

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for m in results["metrics"]:
        writer.writerow([m["metric"], f"{m['value']:.6g}", results.get("model", ""), metric_model(results, m["metric"]),
                         m["n"], m["time_s"], m.get("note", "")])
    paths["csv"] = write_text_atomic(out / "results.csv", buf.getvalue())

    plots = make_plots(results, out / "plots")
    sections = report_sections(results, plots)
    paths["md"] = write_text_atomic(out / "report.md", render_markdown(sections, out))
    paths["html"] = write_text_atomic(out / "report.html", render_html(sections))
    return paths


# ---------------------------------------------------------------------------------------------- plots


def make_plots(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The report's PNGs: "clap" (per prompt), "fad_inf" (the fit), "worst_<k>" (mel spectrograms)."""
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    per_prompt = results.get("per_prompt") or []
    if per_prompt:
        scores = sorted(p["clap_score"] for p in per_prompt)
        fig = Figure(figsize=(8, 3.2), dpi=100)
        ax = fig.add_subplot()
        ax.bar(np.arange(len(scores)), scores, width=1.0, color="#4c72b0")
        ax.axhline(float(np.mean(scores)), color="#c44e52", lw=1, label=f"mean {np.mean(scores):.3f}")
        ax.set_xlabel("prompts, sorted by score")
        ax.set_ylabel("CLAP score (cosine)")
        ax.set_title(f"CLAP score per prompt ({len(scores)} prompts)")
        ax.legend(loc="upper left")
        fig.tight_layout()
        made["clap"] = _save(fig, folder / "clap_per_prompt.png")
    inf = results.get("fad_inf")
    if inf and inf.get("points"):
        n = np.array([p[0] for p in inf["points"]], dtype=float)
        fd = np.array([p[1] for p in inf["points"]])
        fig = Figure(figsize=(5, 3.2), dpi=100)
        ax = fig.add_subplot()
        ax.plot(1 / n, fd, "o", ms=3, label="FD of a subset of n windows")
        grid = np.linspace(0, (1 / n).max(), 50)
        ax.plot(grid, inf["value"] + inf["slope"] * grid, "-", label=f"fit: FAD-inf {inf['value']:.4g}, R^2 {inf['r2']:.3f}")
        ax.set_xlabel("1 / n")
        ax.set_ylabel("FAD")
        ax.legend(fontsize=8)
        fig.tight_layout()
        made["fad_inf"] = _save(fig, folder / "fad_inf.png")
    nov = results.get("novelty")
    if nov:
        sims = np.array([c["novelty_similarity"] for c in novelty_rows(results)])
        fig = Figure(figsize=(6, 3.2), dpi=100)
        ax = fig.add_subplot()
        # bins over the values' own range (they crowd near 1); results.json keeps fixed 0.05-wide bins
        low = min(float(sims.min()), nov["threshold"]) - 0.01
        ax.hist(sims, bins=np.linspace(low, min(1.0, float(sims.max())) + 0.002, 31), color="#4c72b0",
                edgecolor="white")
        ax.axvline(nov["threshold"], color="#c44e52", lw=1, label=f"threshold {nov['threshold']:g}: "
                   f"{100 * nov['plagiarism_rate']:.1f}% of clips at or above")
        ax.set_xlabel("cosine similarity to the nearest training clip")
        ax.set_ylabel("generated clips")
        ax.set_title(f"Novelty ({nov['n']} clips vs {nov['index']['clips']} training clips)")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        made["novelty"] = _save(fig, folder / "novelty.png")
    for rank, clip in enumerate(worst_clips(results), 1):
        try:
            made[f"worst_{rank}"] = mel_plot(Path(clip["file"]), folder / f"worst_{rank}.png",
                                             title=f"#{rank} per-clip FAD {clip['fad']:.4g}: {clip.get('prompt') or ''}")
        except (OSError, ValueError) as err:
            log.warning("no spectrogram for %s: %s", clip["file"], err)
    return made


def worst_clips(results: dict[str, Any], k: int = WORST_CLIPS) -> list[dict[str, Any]]:
    clips = [c for c in results.get("per_clip", []) if isinstance(c.get("fad"), float)]
    return sorted(clips, key=lambda c: -c["fad"])[:k]


def mel_plot(path: Path, png: Path, *, title: str = "") -> Path:
    """Log-mel spectrogram of a clip (the AudioLDM front-end at 16 kHz) as a PNG."""
    import torch
    from matplotlib.figure import Figure
    from soundsmith.codecs.audio import read_audio
    from soundsmith.codecs.mel import MelConfig, MelSpectrogram

    cfg = MelConfig()
    wave, _ = read_audio(path, sample_rate=cfg.sample_rate, channels=1)
    mel = MelSpectrogram(cfg)(torch.from_numpy(wave))[0].numpy()  # [F, S]
    fig = Figure(figsize=(7, 2.4), dpi=100)
    ax = fig.add_subplot()
    seconds = wave.shape[-1] / cfg.sample_rate
    im = ax.imshow(mel, origin="lower", aspect="auto", extent=(0, seconds, 0, cfg.n_mels), cmap="magma")
    fig.colorbar(im, ax=ax, label="log magnitude")
    ax.set_xlabel("seconds")
    ax.set_ylabel("mel bin")
    ax.set_title(title[:90], fontsize=9)
    fig.tight_layout()
    return _save(fig, png)


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.part")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


# -------------------------------------------------------------------------------------------- content


def report_sections(results: dict[str, Any], plots: dict[str, Path]) -> list[tuple]:
    """The report as a list of blocks: ("h", text), ("p", text), ("table", header, rows), ("img", path, caption)."""
    s: list[tuple] = [("h", f"Evaluation report: {results.get('model', 'unknown model')}")]
    emb = results.get("embedding", {})
    clips = results.get("clips", {})
    facts = [f"generated: {results.get('generated')} ({clips.get('generated', '?')} clips, "
             f"{clips.get('generated_skipped', 0)} skipped)",
             f"reference: {results.get('reference')} ({clips.get('reference', '?')} clips, "
             f"{clips.get('reference_skipped', 0)} skipped)"]
    if emb:
        facts.append("embedding: " + ", ".join(f"{k} {v}" for k, v in emb.items() if not isinstance(v, dict)))
    if "clap_model" in results:
        cm = results["clap_model"]
        facts.append(f"CLAP score model: {cm['name']} ({cm['class']}, weights {cm['fingerprint']}): {cm['note']}")
    if "classifier" in results:
        facts.append(f"classifier of KL and IS: {results['classifier']['name']}")
    gen = results.get("generation")
    if gen:
        facts.append(f"generation: {gen['clips']} clips ({gen['num_per_prompt']} per prompt, seed {gen['seed']}, "
                     f"settings {gen['pipeline'] or 'model defaults'}), {gen['generated_now']} generated in this run "
                     f"in {gen['seconds']} s on {gen['processes']} process(es)")
    facts.append(f"covariance: {results.get('covariance')}; time: {results.get('seconds')}")
    s.append(("list", facts))

    s.append(("h2", "Metrics"))
    s.append(("table", ["metric", "value", "n", "model", "time (s)", "note"],
              [[m["metric"], f"{m['value']:.4f}", str(m["n"]), metric_model(results, m["metric"]),
                f"{m['time_s']:.2f}", m.get("note", "")] for m in results["metrics"]]))
    if results.get("not_computed"):
        s.append(("h2", "Not computed"))
        s.append(("list", [f"{m['metric']}: {m['reason']}" for m in results["not_computed"]]))
    if results.get("label_accuracy") or results.get("feature_label_accuracy"):
        s += label_sections(results)
    if results.get("warnings"):
        s.append(("h2", "Warnings"))
        warnings = results["warnings"]
        s.append(("list", warnings[:30] + ([f"... and {len(warnings) - 30} more (results.json)"]
                                          if len(warnings) > 30 else [])))
    if "clap" in plots:
        s.append(("h2", "CLAP score per prompt"))
        s.append(("img", plots["clap"], "CLAP score of each prompt (mean over its clips), sorted"))
        per_prompt = sorted(results.get("per_prompt", []), key=lambda p: p["clap_score"])
        s.append(("p", "Lowest-scoring prompts:"))
        s.append(("table", ["prompt", "CLAP score", "clips"],
                  [[p["prompt"], f"{p['clap_score']:.3f}", str(p["clips"])] for p in per_prompt[:10]]))
    if "fad_inf" in plots:
        s.append(("h2", "FAD-inf"))
        s.append(("img", plots["fad_inf"], "FD of random subsets against 1/n and the fitted line"))
    nov = results.get("novelty")
    if nov:
        idx = nov["index"]
        s.append(("h2", "Novelty: nearest training clip"))
        s.append(("list", [
            f"index: {idx['path']} ({idx['clips']} clips of the {idx['split']} split of {idx['data_dir']}, "
            f"embedder {idx['embedder']} {idx['embedder_fingerprint']})",
            f"similarity to the nearest training clip (cosine): mean {nov['mean']:.3f}, median {nov['median']:.3f}, "
            f"p90 {nov['p90']:.3f}, max {nov['max']:.3f} over {nov['n']} clips",
            f"plagiarism rate: {nov['above_threshold']} of {nov['n']} clips ({100 * nov['plagiarism_rate']:.1f}%) "
            f"at or above {nov['threshold']:g}",
            "read with the CLAP score: a clip that matches its prompt AND sits near one training clip may be a "
            "copy; listen to both"]))
        if "novelty" in plots:
            s.append(("img", plots["novelty"], "Similarity of each generated clip to its nearest training clip"))
        edges, counts = nov["histogram"]["edges"], nov["histogram"]["counts"]
        s.append(("table", ["similarity", "clips"],
                  [[f"[{edges[i]:.2f}, {edges[i + 1]:.2f}{']' if i == len(counts) - 1 else ')'}", str(c)]
                   for i, c in enumerate(counts) if c]))
        rows = novelty_rows(results)
        more = f" (the {NOVELTY_ROWS} most similar; all in results.json)" if len(rows) > NOVELTY_ROWS else ""
        s.append(("p", f"Per clip, most similar first{more}; * = at or above the threshold:"))
        s.append(("table", ["clip", "prompt", "nearest training clip", "its caption", "audio-audio similarity",
                            "text-audio CLAP score"],
                  [[Path(c["file"]).name, c.get("prompt") or "", c["nearest_train_file"],
                    c.get("nearest_train_caption") or "",
                    f"{c['novelty_similarity']:.3f}" + (" *" if c.get("above_threshold") else ""),
                    f"{c['clap_score']:.3f}" if isinstance(c.get("clap_score"), float) else ""]
                   for c in rows[:NOVELTY_ROWS]]))
    worst = worst_clips(results)
    if worst:
        s.append(("h2", f"Worst {len(worst)} clips by per-clip FAD"))
        s.append(("table", ["clip", "prompt", "per-clip FAD", "CLAP score", "predicted", "labels"],
                  [[Path(c["file"]).name, c.get("prompt") or "", f"{c['fad']:.4g}",
                    f"{c['clap_score']:.3f}" if isinstance(c.get("clap_score"), float) else "",
                    _labels_text(c.get("predicted")), _labels_text(c.get("labels"))] for c in worst]))
        for rank in range(1, len(worst) + 1):
            if f"worst_{rank}" in plots:
                s.append(("img", plots[f"worst_{rank}"], f"#{rank}: {Path(worst[rank - 1]['file']).name}"))
    return s


def label_sections(results: dict[str, Any]) -> list[tuple]:
    """Label accuracy per family under both classifiers side by side, then where they disagree."""
    clap_acc, hand_acc = results.get("label_accuracy", {}), results.get("feature_label_accuracy", {})
    dis = results.get("label_disagreement", {})
    per_family = dis.get("per_family", {})

    def cell(acc: dict, family: str) -> str:
        return f"{acc[family]['accuracy']:.3f}" if family in acc else "-"

    families = list(dict.fromkeys([*clap_acc, *hand_acc]))
    s: list[tuple] = [("h2", "Label accuracy per family"),
                      ("table", ["family", "soundsmith-labels (CLAP features)", "soundsmith-feature-labels "
                                 "(hand-crafted features)", "clips", "predictions differ"],
                       [[f, cell(clap_acc, f), cell(hand_acc, f), str((clap_acc.get(f) or hand_acc[f])["n"]),
                         f"{per_family[f]['differ']} (only CLAP right {per_family[f]['only_first']}, only features "
                         f"right {per_family[f]['only_second']})" if f in per_family else ""] for f in families])]
    if dis.get("clips"):
        rows = dis["clips"]
        more = f" (the first {DISAGREEMENT_ROWS}; all in results.json)" if len(rows) > DISAGREEMENT_ROWS else ""
        s.append(("p", f"The two label classifiers disagree on {dis['all']['differ']} of {dis['all']['n']} labelled "
                  f"clips{more}; listen to these first:"))
        s.append(("table", ["clip", "prompt", "labels", "CLAP-feature classifier", "feature classifier"],
                  [[Path(c["file"]).name, c.get("prompt") or "", _labels_text(c.get("labels")),
                    _labels_text(c.get("predicted")), _labels_text(c.get("predicted_features"))]
                   for c in rows[:DISAGREEMENT_ROWS]]))
    return s


def _labels_text(labels: Any) -> str:
    if not isinstance(labels, dict):
        return ""
    return ", ".join(f"{k}={'/'.join(v) if isinstance(v, list) else v}" for k, v in labels.items())


def render_markdown(sections: list[tuple], base: Path) -> str:
    lines: list[str] = []
    for block in sections:
        kind = block[0]
        if kind == "h":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "list":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[2]}]({os.path.relpath(block[1], base)})", ""]
    return "\n".join(lines)


def render_html(sections: list[tuple]) -> str:
    e = html.escape
    body: list[str] = []
    title = "Evaluation report"
    for block in sections:
        kind = block[0]
        if kind == "h":
            title = block[1]
            body.append(f"<h1>{e(block[1])}</h1>")
        elif kind == "h2":
            body.append(f"<h2>{e(block[1])}</h2>")
        elif kind == "p":
            body.append(f"<p>{e(block[1])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in block[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{e(block[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{e(block[2])}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:90%;text-align:left}img{max-width:100%}figcaption{font-size:85%;color:#555}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
