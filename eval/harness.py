"""The evaluation harness: generate a set from a prompt file, then score it against reference audio.

    soundsmith eval run --model M --prompts FILE --reference DIR --out DIR [--num-per-prompt K] [--seed S]
    soundsmith eval score --generated DIR --reference DIR [--metrics fad,clap,kl,is,labels] [--embedding NAME]

`run_eval` (generate-then-score):
1. reads the prompt file (pipelines/prompts.py: captions, paired reference clips, true labels);
2. plans K clips per prompt, clip (i, k) with seed `seed + i * K + k`, written to `<out>/generated/` as
   `<i>-<k>-<slug>.wav` + a JSON sidecar (prompt, seed, settings, reference, labels). A rerun skips the
   clips already written (resumable); a rerun with other settings into the same folder is refused;
3. splits the missing clips over the processes of `accelerate launch` (`PartialState.split_between_
   processes`), each generating its share in batches;
4. scores the folder with `score_folders` on the main process and writes the report (eval/report.py).

`score_folders` (fadtk-style, any two folders): embeds every clip (cached per embedding and file
content, eval/cache.py), then computes the chosen metrics (docs/metrics.md):
- "fad": Fréchet distance over all windows of all clips, FAD-inf and per-clip FAD;
- "clap": CLAP score per clip, per prompt and overall (prompts from the sidecars), naming the CLAP and
  whether it is the one that conditioned generation;
- "kl": KL divergences between the classifier distributions of each generated clip and its paired
  reference (the sidecar's "reference", else the same file name);
- "is": Inception Score (10 splits);
- "labels": the label classifier's accuracy per family against the prompts' labels, and beside it the
  accuracy of the second classifier, on hand-crafted features (eval/feature_labels.py, no CLAP), with the
  clips where the two predict different labels.
With a training index (`novelty_index`, eval/novelty.py) it adds novelty: each generated clip's nearest
training clip and their audio-audio similarity, the distribution and the plagiarism rate at a threshold,
beside the clip's text-audio CLAP score.
The classifier of "kl" and "is" is the embedder's own head when it has one (PANNs: 527 AudioSet
classes), else our label classifier's heads.

Bad input gives one-line errors or warnings, never a NaN in a report: an empty folder or one without
audio is an error; silent, unreadable or non-finite clips are skipped with a warning (and listed); a
set too small for a full covariance is an error naming the windows needed and the `covariance` options;
differing sample rates are resampled to the embedding's rate with a warning; a metric that cannot be
computed (no prompts, no pairs, too few clips) is listed under "not_computed" with the reason.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from soundsmith.core.run_lock import releases_folder_locks
from soundsmith.pipelines.prompts import PromptItem, read_prompt_file

from .cache import FeatureCache, default_cache_dir, embedder_key, file_hash, set_key
from .clips import ClipSet, Extractor, extract, list_audio
from .fad import Statistics, fad, fad_inf, per_clip_fad

log = logging.getLogger(__name__)

METRICS = ("fad", "clap", "kl", "is", "labels")
GENERATION_KEYS = ("model", "prompts_sha256", "num_per_prompt", "seed", "pipeline")  # a rerun must match these


def score_folders(generated: str | os.PathLike | Sequence[str | os.PathLike],
                  reference: str | os.PathLike | Sequence[str | os.PathLike], *,
                  metrics: Sequence[str] = METRICS, embedding: str | Any = "clap",
                  embedding_checkpoint: str | None = None, clap_model: str | os.PathLike | Any | None = None,
                  labels_model: str | os.PathLike | Any | None = None,
                  feature_labels_model: str | os.PathLike | Any | None = None, covariance: str = "full",
                  cache_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                  device: str = "cpu", conditioning_clap: str | None = None, model: str | None = None,
                  novelty_index: str | os.PathLike | Any | None = None, novelty_threshold: float = 0.9,
                  progress: bool = True) -> dict[str, Any]:
    """Score a folder (or list) of generated clips against reference clips; see the module docstring.

    Args:
        generated, reference: folders (searched recursively for .wav/.flac/.ogg) or lists of files.
        metrics: any of "fad", "clap", "kl", "is", "labels" (default: all).
        embedding: embedder name (eval/embedders.py registry; default "clap", our CLAP) or an Embedder.
        embedding_checkpoint: checkpoint of the embedder (default: its shipped/standard one).
        clap_model: CLAP folder (ours or a transformers ClapModel folder) or a loaded CLAP for the CLAP
            score (default: models/clap).
        labels_model: label classifier folder or a loaded `LabelClassifier` (default: models/labels).
        feature_labels_model: folder or loaded `FeatureLabelClassifier`, the second classifier of "labels"
            (default: models/labels-features).
        covariance: "full" (default), "diagonal" or "shrinkage" (eval/fad.py).
        cache_dir: embedding cache root (default: `eval.cache.default_cache_dir()`); False-y "" disables it.
        out: if given, results.json/.csv and the report are written there.
        device: where the embedding models run.
        conditioning_clap: weights fingerprint of the CLAP that conditioned generation, to say whether the
            scoring CLAP is independent of it.
        model: name of the generating model for the report (default: from the sidecars).
        novelty_index: a training index (folder from `soundsmith eval index`, a corpus folder whose index
            was built with the `embedding` embedder, or a loaded `TrainingIndex`): adds the novelty section.
        novelty_threshold: similarity at or above which a clip counts as a near copy, in (0, 1] (default 0.9).
    Returns the results dict (also written to `out`).
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"metrics must be a non-empty subset of {','.join(METRICS)}, got {','.join(metrics) or '(none)'}")
    from .fad import COVARIANCES

    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}")
    from .novelty import check_threshold, resolve_index

    check_threshold(novelty_threshold, "novelty_threshold")
    index = None
    if novelty_index is not None:  # before any embedding: a missing index says how to build one
        index = resolve_index(novelty_index, embedder=embedding if isinstance(embedding, str) else embedding.name,
                              cache_dir=cache_dir or None)
    gen_files = list_audio(generated, "generated")
    if reference is None:
        needing = [m for m in ("fad", "kl") if m in metrics]
        if needing:
            raise ValueError(f"metrics {','.join(needing)} need reference audio: give a reference folder")
        ref_files = []
    else:
        ref_files = list_audio(reference, "reference")
    root = None if cache_dir == "" else (default_cache_dir() if cache_dir is None else Path(cache_dir))
    t_start = time.perf_counter()
    results: dict[str, Any] = {"generated": _where(generated), "reference": _where(reference) if reference else None,
                               "covariance": covariance, "metrics": [], "not_computed": [], "warnings": []}
    timing: dict[str, float] = {}

    # 1. the models each metric needs --------------------------------------------------------------------
    extractors: dict[str, Extractor] = {}
    embedder = None
    same_for_novelty = index is not None and index.embedder_name == (
        embedding if isinstance(embedding, str) else embedding.name)
    if "fad" in metrics or "kl" in metrics or "is" in metrics or same_for_novelty:
        embedder = _get_embedder(embedding, embedding_checkpoint, device)
        info = embedder.describe()
        results["embedding"] = info
    labeler = None
    # every eval/embedders.py Embedder has a `logits` method; only those with `n_classes` > 0 have a head
    classifier_from_embedder = embedder is not None and getattr(embedder, "n_classes", 0) > 0
    shared: dict[str, Any] = {}  # one forward pass gives a clip's embeddings and logits when both are missing

    def embed_fn(wave: np.ndarray, sr: int) -> np.ndarray:
        if classifier_from_embedder and hasattr(embedder, "embed_and_logits"):
            emb, logits = embedder.embed_and_logits(wave, sr)
            shared["logits"] = (wave, logits)
            return emb
        return embedder.embed(wave, sr)

    def logits_fn(wave: np.ndarray, sr: int) -> np.ndarray:
        kept = shared.pop("logits", None)
        return kept[1] if kept is not None and kept[0] is wave else embedder.logits(wave, sr)

    if embedder is not None:
        emb_key = embedder_key(embedder)  # the settings and weights, not where the weights are
        extractors["embedding"] = (FeatureCache(root, "emb", emb_key), embed_fn)
    novelty_key = None  # the extractor whose windows give the clip vectors for novelty
    if index is not None:
        from .novelty import check_embedder, index_embedder

        if same_for_novelty:
            check_embedder(index, embedder)
            novelty_key = "embedding"
        else:  # the index was built with another embedder than the FAD one: load that one as well
            nov_embedder = index_embedder(index, device=device)
            extractors["novelty"] = (FeatureCache(root, "emb", embedder_key(nov_embedder)), nov_embedder.embed)
            novelty_key = "novelty"
    need_labeler = "labels" in metrics or (("kl" in metrics or "is" in metrics) and not classifier_from_embedder)
    if need_labeler:
        try:
            labeler = _get_labeler(labels_model)
        except (FileNotFoundError, ValueError) as err:
            for m in ("labels", "kl", "is"):
                if m in metrics and (m == "labels" or not classifier_from_embedder):
                    _not_computed(results, m, f"no label classifier: {' '.join(str(err).split())}")
        if labeler is not None:
            feats = labeler.features
            extractors["labelfeat"] = (FeatureCache(root, feats.cache_namespace, feats.cache_key()),
                                       lambda w, sr: feats([w], sr)[0])
    feature_labeler = None
    if "labels" in metrics:  # the second, CLAP-free classifier, reported beside the first
        try:
            feature_labeler = _get_feature_labeler(feature_labels_model)
        except (FileNotFoundError, ValueError) as err:
            _not_computed(results, "feature_label_accuracy", f"no feature label classifier: {err}")
        else:
            hand = feature_labeler.features
            extractors["featlabel"] = (FeatureCache(root, hand.cache_namespace, hand.cache_key()),
                                       lambda w, sr: hand([w], sr)[0])
    if "kl" in metrics or "is" in metrics:
        if classifier_from_embedder:
            extractors["logits"] = (FeatureCache(root, "logits", emb_key), logits_fn)
            results["classifier"] = {"name": f"{results['embedding'].get('name')} classifier head",
                                     "source": "embedder"}
        elif labeler is not None:
            results["classifier"] = {"name": labeler.name, "classes": len(labeler.class_names()),
                                     "source": "label classifier"}
    clap = None
    if "clap" in metrics:
        try:
            clap, clap_info = _get_clap(clap_model, conditioning_clap)
        except (FileNotFoundError, ValueError) as err:
            _not_computed(results, "clap_score", f"no CLAP model: {err}")
        else:
            results["clap_model"] = clap_info
            extractors["clap"] = (FeatureCache(root, "clapaudio", clap_info["fingerprint"]),
                                  lambda w, sr: clap.embed_audio(w, sr)[0].float().cpu().numpy())

    # 2. per-clip arrays (cached), skipping unusable clips ------------------------------------------------
    logits_key = "logits" if "logits" in extractors else ("labelfeat" if labeler is not None else None)
    gen_needs = {k: v for k, v in extractors.items() if k != "embedding" or "fad" in metrics or novelty_key == k}
    ref_needs = {}
    if "fad" in metrics:
        ref_needs["embedding"] = extractors["embedding"]
    if "kl" in metrics and logits_key is not None:
        ref_needs[logits_key] = extractors[logits_key]
    t0 = time.perf_counter()
    gen = extract(gen_files, "generated", gen_needs, progress=progress)
    if ref_needs:
        ref = extract(ref_files, "reference", ref_needs, progress=progress)
    else:  # neither FAD nor KL: the reference only has to exist and hold audio
        ref = ClipSet("reference", paths=ref_files)
    timing["embedding"] = time.perf_counter() - t0
    results["clips"] = {"generated": len(gen), "reference": len(ref),
                        "generated_skipped": len(gen.skipped), "reference_skipped": len(ref.skipped)}
    results["skipped_clips"] = gen.skipped + ref.skipped
    for s in results["skipped_clips"]:
        results["warnings"].append(f"{s['set']} clip {Path(s['file']).name} skipped: {s['reason']}")
    _check_rates(gen, ref, results, embedder)
    results["model"] = model or _common(m.get("model") for m in gen.meta) or "unknown"
    per_clip = [{"file": str(p), "prompt": m.get("prompt"), "prompt_index": m.get("prompt_index", m.get("index")),
                 "seed": m.get("seed")} for p, m in zip(gen.paths, gen.meta)]

    # 3. FAD, FAD-inf, per-clip FAD ----------------------------------------------------------------------
    if "fad" in metrics:
        t0 = time.perf_counter()
        cache = extractors["embedding"][0]
        gen_stats = _set_stats(gen, cache, covariance)
        ref_stats = _set_stats(ref, cache, covariance)
        value = fad(gen_stats, ref_stats)
        note = f"{covariance} covariance; {ref_stats.n} reference windows from {len(ref)} clips"
        _metric(results, "fad", value, gen_stats.n, time.perf_counter() - t0, note)
        t0 = time.perf_counter()
        try:
            inf = fad_inf(np.concatenate(gen.arrays["embedding"]), ref_stats)
            results["fad_inf"] = {"value": inf.value, "slope": inf.slope, "r2": inf.r2, "points": inf.points}
            dt = time.perf_counter() - t0
            _metric(results, "fad_inf", inf.value, gen_stats.n, dt, f"fit FD = a + b/n over {len(inf.points)} subsets")
            _metric(results, "fad_inf_r2", inf.r2, gen_stats.n, dt, "R^2 of the FAD-inf fit")
        except ValueError as err:
            _not_computed(results, "fad_inf", str(err))
        for row, value in zip(per_clip, per_clip_fad(gen.arrays["embedding"], ref_stats)):
            row["fad"] = value

    # 4. CLAP score --------------------------------------------------------------------------------------
    if clap is not None:
        t0 = time.perf_counter()
        idx = [i for i, m in enumerate(gen.meta) if isinstance(m.get("prompt"), str) and m["prompt"].strip()]
        if not idx:
            _not_computed(results, "clap_score", "no prompts: the generated clips have no JSON sidecars with a "
                          "'prompt' (make them with `soundsmith generate` or `soundsmith eval run`)")
        else:
            from .metrics import clap_score

            texts = [gen.meta[i]["prompt"] for i in idx]
            text_emb = clap.embed_text(texts).float().cpu().numpy()
            audio_emb = np.stack([gen.arrays["clap"][i] for i in idx])
            groups = [per_clip[i]["prompt_index"] if per_clip[i]["prompt_index"] is not None else texts[j]
                      for j, i in enumerate(idx)]
            cs = clap_score(text_emb, audio_emb, groups)
            for j, i in enumerate(idx):
                per_clip[i]["clap_score"] = cs["per_clip"][j]
            first = {}
            for j, g in enumerate(groups):
                first.setdefault(g, texts[j])
            results["per_prompt"] = [{"prompt_index": g if not isinstance(g, str) else None, "prompt": first[g],
                                      "clap_score": v, "clips": groups.count(g)} for g, v in cs["per_group"].items()]
            dt = time.perf_counter() - t0
            _metric(results, "clap_score", cs["mean"], cs["n"], dt, f"mean cosine, {results['clap_model']['name']}")
            _metric(results, "clap_score_std", cs["std"], cs["n"], dt, "std over clips")
            if len(idx) < len(gen):
                results["warnings"].append(f"CLAP score over {len(idx)} of {len(gen)} clips (the rest have no prompt)")

    # 5. classifier metrics: KL (paired) and Inception Score ----------------------------------------------
    def clip_logits(clips: ClipSet) -> list[np.ndarray]:
        if logits_key == "logits":
            return clips.arrays["logits"]
        return list(labeler.logits_from_features(np.stack(clips.arrays["labelfeat"])))

    if "kl" in metrics and logits_key is not None:
        t0 = time.perf_counter()
        pairs = _pairs(gen, ref)
        if not pairs:
            _not_computed(results, "kl", "no generated clip has a paired reference clip (sidecar 'reference' or the "
                          "same file name in the reference set)")
        else:
            from .metrics import kl_metrics

            g_logits, r_logits = clip_logits(gen), clip_logits(ref)
            kl = kl_metrics([g_logits[i] for i, _ in pairs], [r_logits[j] for _, j in pairs])
            dt = time.perf_counter() - t0
            for name, value in kl.items():
                _metric(results, name, value, len(pairs), dt, f"{results['classifier']['name']}; paired clips")
            if len(pairs) < len(gen):
                results["warnings"].append(f"KL over {len(pairs)} of {len(gen)} generated clips (the rest unpaired)")
    if "is" in metrics and logits_key is not None:
        t0 = time.perf_counter()
        from .metrics import IS_SPLITS, batch_probabilities, inception_score

        if len(gen) < IS_SPLITS:
            _not_computed(results, "inception_score", f"needs at least {IS_SPLITS} generated clips "
                          f"({IS_SPLITS} splits), got {len(gen)}")
        else:
            mean, std = inception_score(batch_probabilities(clip_logits(gen), "softmax"))
            dt = time.perf_counter() - t0
            _metric(results, "inception_score", mean, len(gen), dt, f"{IS_SPLITS} splits; "
                    f"{results['classifier']['name']}")
            _metric(results, "inception_score_std", std, len(gen), dt, "std over splits")

    # 6. label accuracy: each classifier (CLAP features; hand-crafted features), and where they disagree --
    classifiers = [(key, prefix, clf) for key, prefix, clf in (("labelfeat", "", labeler),
                                                               ("featlabel", "feature_", feature_labeler))
                   if "labels" in metrics and clf is not None]
    predictions: dict[str, list[dict[str, str]]] = {}
    idx = [i for i, m in enumerate(gen.meta) if isinstance(m.get("labels"), dict) and m["labels"]]
    if classifiers and not idx:  # one entry for both classifiers: the reason is the prompts'
        _not_computed(results, "label_accuracy", "no true labels: the prompts carry none (a prompt file with "
                      "'labels' or 'domain' + 'label', e.g. benchmarks/prompts/adherence.jsonl)")
    for key, prefix, clf in classifiers:
        t0 = time.perf_counter()
        predicted = predictions[prefix] = clf.predict_features(np.stack(gen.arrays[key]))
        for row, pred in zip(per_clip, predicted):
            row[f"predicted{'_features' if prefix else ''}"] = pred
        if idx:
            from .metrics import label_accuracy

            truth = [{k: v for k, v in gen.meta[i]["labels"].items() if k in clf.classes} for i in idx]
            acc = label_accuracy([predicted[i] for i in idx], truth)
            results[f"{prefix}label_accuracy"] = acc
            dt = time.perf_counter() - t0
            for family, m in acc.items():
                name = f"{prefix}label_accuracy" if family == "all" else f"{prefix}label_accuracy_{family}"
                _metric(results, name, m["accuracy"], m["n"], dt, clf.name)
            for i, t in zip(idx, truth):
                per_clip[i]["labels"] = t
    if len(predictions) == 2 and idx:
        from .feature_labels import disagreement

        t0 = time.perf_counter()
        dis = disagreement([predictions[""][i] for i in idx], [predictions["feature_"][i] for i in idx],
                           [per_clip[i]["labels"] for i in idx])
        dis["clips"] = [{"file": per_clip[idx[j]]["file"], "prompt": per_clip[idx[j]]["prompt"],
                         "labels": per_clip[idx[j]]["labels"], "predicted": predictions[""][idx[j]],
                         "predicted_features": predictions["feature_"][idx[j]]} for j in dis.pop("indices")]
        results["label_disagreement"] = dis
        _metric(results, "label_disagreement", dis["all"]["rate"], dis["all"]["n"], time.perf_counter() - t0,
                "share of labelled clips where the two classifiers predict a different label in some family")

    # 7. novelty: the nearest training clip of each generated clip -------------------------------------
    if index is not None:
        t0 = time.perf_counter()
        from .novelty import novelty, pool_clip

        nov = novelty(np.stack([pool_clip(a) for a in gen.arrays[novelty_key]]), index, threshold=novelty_threshold)
        for row, near in zip(per_clip, nov.pop("per_clip")):
            row.update({"novelty_similarity": near["similarity"], "nearest_train_file": near["nearest_file"],
                        "nearest_train_caption": near["nearest_caption"], "above_threshold": near["above_threshold"]})
        results["novelty"] = {**nov, "index": index.summary()}
        dt = time.perf_counter() - t0
        note = f"max cosine to {len(index)} {index.split} clips ({index.embedder_name})"
        for stat in ("mean", "median", "p90", "max"):
            _metric(results, f"novelty_sim_{stat}", nov[stat], nov["n"], dt, f"{stat} over clips of the {note}")
        _metric(results, "plagiarism_rate", nov["plagiarism_rate"], nov["n"], dt,
                f"fraction of clips with similarity >= {novelty_threshold:g} (MusicLDM SIM_AA@90 at 0.9)")

    results["per_clip"] = per_clip
    timing["total"] = time.perf_counter() - t_start
    results["seconds"] = {k: round(v, 2) for k, v in timing.items()}
    _check_finite(results)
    if out is not None:
        from .report import write_report

        write_report(results, out)
    return results


def _metric(results: dict, name: str, value: float, n: int, seconds: float, note: str = "") -> None:
    if not math.isfinite(value):  # never a NaN in a report: say why instead
        _not_computed(results, name, f"the computation gave {value} ({note})")
        return
    results["metrics"].append({"metric": name, "value": float(value), "n": int(n), "time_s": round(seconds, 3),
                               "note": note})


def _not_computed(results: dict, name: str, reason: str) -> None:
    reason = " ".join(str(reason).split())
    results["not_computed"].append({"metric": name, "reason": reason})
    log.warning("%s not computed: %s", name, reason)


def _check_finite(results: dict) -> None:
    bad = [m["metric"] for m in results["metrics"] if not math.isfinite(m["value"])]
    assert not bad, f"non-finite metrics slipped through: {bad}"


def _set_stats(clips: ClipSet, cache: FeatureCache, covariance: str) -> Statistics:
    """Statistics over all windows of all clips, cached per set of file contents."""
    key = set_key(clips.hashes, covariance)
    stats = cache.get_stats(key)
    if stats is None:
        windows = np.concatenate(clips.arrays["embedding"])  # [sum S, D]
        stats = Statistics.from_embeddings(windows, covariance=covariance,
                                           what=f"{clips.name} set ({len(clips)} clips)")
        cache.put_stats(key, stats)
    return stats


def _pairs(gen: ClipSet, ref: ClipSet) -> list[tuple[int, int]]:
    """(generated index, reference index): the sidecar's "reference" path, else the same file stem."""
    by_path = {str(p.resolve()): j for j, p in enumerate(ref.paths)}
    by_stem: dict[str, int] = {}
    for j, p in enumerate(ref.paths):
        by_stem.setdefault(p.stem, j)
    pairs = []
    for i, (path, meta) in enumerate(zip(gen.paths, gen.meta)):
        target = meta.get("reference")
        if isinstance(target, str) and str(Path(target).resolve()) in by_path:
            pairs.append((i, by_path[str(Path(target).resolve())]))
        elif path.stem in by_stem:
            pairs.append((i, by_stem[path.stem]))
    return pairs


def _check_rates(gen: ClipSet, ref: ClipSet, results: dict, embedder: Any) -> None:
    rates = {"generated": sorted(set(gen.sample_rates)), "reference": sorted(set(ref.sample_rates))}
    results["sample_rates"] = rates
    every = sorted(set(rates["generated"]) | set(rates["reference"]))
    if len(every) > 1:
        target = f"the embedding's {embedder.sample_rate} Hz" if embedder is not None else "each model's rate"
        message = (f"sample rates differ (generated {'/'.join(map(str, rates['generated']))} Hz, reference "
                   f"{'/'.join(map(str, rates['reference'])) or '-'} Hz): every clip is resampled to {target} (soxr)")
        results["warnings"].append(message)
        log.warning(message)


def _common(values: Any) -> str | None:
    vals = [v for v in values if isinstance(v, str)]
    return max(set(vals), key=vals.count) if vals else None


def _where(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"{len(source)} files"


# ------------------------------------------------------------------------------------- model loading


def _get_embedder(embedding: str | Any, checkpoint: str | None, device: str) -> Any:
    if not isinstance(embedding, str):
        return embedding
    from .embedders import get_embedder

    return get_embedder(embedding, checkpoint=checkpoint, device=device)


def _get_labeler(labels_model: Any) -> Any:
    from .labels import LabelClassifier, load_label_classifier

    if isinstance(labels_model, LabelClassifier):
        return labels_model
    return load_label_classifier(labels_model)


def _get_feature_labeler(feature_labels_model: Any) -> Any:
    from .feature_labels import FeatureLabelClassifier, load_feature_label_classifier

    if isinstance(feature_labels_model, FeatureLabelClassifier):
        return feature_labels_model
    return load_feature_label_classifier(feature_labels_model)


def _get_clap(clap_model: Any, conditioning: str | None) -> tuple[Any, dict[str, Any]]:
    """The scoring CLAP and what to say about it (name, fingerprint, independent of the conditioning one?)."""
    from soundsmith.core.weights import weights_fingerprint
    from soundsmith.gen.clap import ClapBase, load_clap

    from .labels import DEFAULT_CLAP

    if isinstance(clap_model, ClapBase):
        clap, name = clap_model, type(clap_model).__name__
    else:
        folder = Path(clap_model) if clap_model is not None else DEFAULT_CLAP
        clap, name = load_clap(folder), str(folder)
    clap.eval()
    fp = weights_fingerprint(clap)
    if conditioning is None:
        independent, note = None, "unknown whether this CLAP conditioned generation"
    elif conditioning == fp:
        independent = False
        note = ("the same CLAP that conditioned generation (no independent one given: pass a LAION CLAP "
                "transformers folder as the CLAP model for an independent score)")
    else:
        independent, note = True, "independent of the CLAP that conditioned generation"
    return clap, {"name": name, "class": type(clap).__name__, "fingerprint": fp, "independent": independent,
                  "note": note}


def conditioning_clap_fingerprint(model_dir: str | os.PathLike, pipe: Any = None) -> str | None:
    """Fingerprint of the CLAP that conditions a pipeline: the loaded pipeline's, else the folder's
    config.json "trained_with" (our LDM folders record it), else None."""
    conditioner = getattr(pipe, "conditioner", None)
    if conditioner is not None and hasattr(conditioner, "fingerprint"):
        return conditioner.fingerprint()
    config = Path(model_dir) / "config.json"
    if config.is_file():
        from soundsmith.core.files import read_json_object

        try:
            trained_with = read_json_object(config).get("trained_with") or {}
        except ValueError:
            return None
        return trained_with.get("clap") if isinstance(trained_with, dict) else None
    return None


# ---------------------------------------------------------------------------------------- generation


def clip_name(index: int, k: int, prompt: str) -> str:
    from soundsmith.pipelines.base import prompt_slug

    return f"{index:04d}-{k}-{prompt_slug(prompt, 40)}.wav"


@releases_folder_locks  # the lock on `out` below is held until run_eval returns
def run_eval(model: str | os.PathLike, prompts: str | os.PathLike, reference: str | os.PathLike | None,
             out: str | os.PathLike, *, num_per_prompt: int = 1, seed: int = 0, batch_size: int = 8,
             limit: int | None = None, pipeline_kwargs: dict[str, Any] | None = None, device: str = "auto",
             dtype: str = "fp32", metrics: Sequence[str] = METRICS, embedding: str | Any = "clap",
             embedding_checkpoint: str | None = None, clap_model: Any = None, labels_model: Any = None,
             feature_labels_model: Any = None, covariance: str = "full", cache_dir: str | os.PathLike | None = None,
             novelty_index: str | os.PathLike | Any | None = None, novelty_threshold: float = 0.9,
             progress: bool = True, pipeline: Any = None,
             callback: Callable[[int, int], Any] | None = None) -> dict[str, Any] | None:
    """Generate `num_per_prompt` clips per prompt of `prompts` into `<out>/generated`, then score them.

    Args:
        model: pipeline folder (`soundsmith.pipelines.load_pipeline`).
        prompts: prompt file (.jsonl or .csv, pipelines/prompts.py).
        reference: reference folder: relative reference paths in the prompt file resolve there; the
            reference set is the prompts' referenced clips, or every clip in the folder when they name none.
        out: output folder: generated/, results.json, results.csv, report.md, report.html, plots/.
        num_per_prompt: clips per prompt, 1-64 (default 1). seed: clip (i, k) gets seed + i * K + k.
        batch_size: clips per pipeline call (default 8). limit: only the first `limit` prompts.
        pipeline_kwargs: passed to every pipeline call (duration_s, num_inference_steps, guidance_scale,
            scheduler, negative_prompt, watermark).
        device, dtype: where and how the pipeline runs ("auto": each accelerate process's device).
        metrics, embedding, embedding_checkpoint, clap_model, labels_model, feature_labels_model, covariance,
            cache_dir, novelty_index, novelty_threshold: as `score_folders`.
        pipeline: an already loaded pipeline (tests, the app); `model` then only names it.
        callback: `callback(clips_done, clips_to_generate)` after every generated batch (the main process's
            share); returning False stops before the next batch with `GenerationCancelled` (the clips
            written so far stay, and a rerun continues from them).
    Returns the results dict on the main process, None on the others.
    """
    from accelerate import PartialState
    from soundsmith.codecs.audio import write_audio
    from soundsmith.core.checks import check_int
    from soundsmith.core.files import write_json
    from soundsmith.core.run_lock import (
        check_folder_free,
        check_output_dir_arg,
        lock_until_return,
        run_on_main_process,
    )
    from soundsmith.pipelines.base import check_output_folder
    from tqdm.auto import tqdm

    check_int("num_per_prompt", num_per_prompt, 1, 64)
    check_int("seed", seed, 0, 2**63 - 1)
    check_int("batch_size", batch_size, 1, 4096)
    items = read_prompt_file(prompts, reference_dir=reference, limit=limit)
    ref_source = _reference_set(items, reference)
    if novelty_index is not None:  # fail before generating anything: a missing index says how to build one
        from .novelty import check_threshold, resolve_index

        check_threshold(novelty_threshold, "novelty_threshold")
        novelty_index = resolve_index(novelty_index, embedder=embedding if isinstance(embedding, str)
                                      else embedding.name, cache_dir=cache_dir or None)
    if ref_source is None and any(m in metrics for m in ("fad", "kl")):  # fail before generating anything
        raise ValueError(f"metrics fad and kl need reference audio: {prompts} names no reference clips and no "
                         "reference folder was given (or leave fad,kl out of the metrics)")
    out = check_output_dir_arg(out)
    check_folder_free(out)  # another `eval run` into it is refused before any work
    check_output_folder(out, create=True)
    gen_dir = out / "generated"
    gen_dir.mkdir(exist_ok=True)
    kwargs = {k: v for k, v in (pipeline_kwargs or {}).items() if v is not None}
    settings = {"model": str(model), "prompts": str(prompts), "prompts_sha256": file_hash(prompts),
                "num_per_prompt": num_per_prompt, "seed": seed, "limit": limit, "pipeline": kwargs,
                "reference": None if reference is None else str(reference)}
    import torch

    # as the training loops do: without CUDA (or with --device cpu) accelerate must be told, then it uses gloo
    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    run_on_main_process(state, lambda: lock_until_return(out))  # one process (group) per output folder
    config_path = out / "eval_config.json"
    _check_same_settings(config_path, settings)

    # 1. plan: clip (i, k) -> file, seed; what is already written is skipped -----------------------------
    plan = [(i, k, item, seed + i * num_per_prompt + k, gen_dir / clip_name(i, k, item.prompt))
            for i, item in enumerate(items) for k in range(num_per_prompt)]
    todo = [p for p in plan if not (p[4].is_file() and p[4].with_suffix(".json").is_file())]
    if state.is_main_process:
        write_json(config_path, settings)
        if len(todo) < len(plan):
            log.info("%s: %d of %d clips already written; generating the other %d", gen_dir, len(plan) - len(todo),
                     len(plan), len(todo))

    # 2. generate this process's share of the missing clips, batch by batch ----------------------------
    t0 = time.perf_counter()
    pipe = pipeline
    if todo:
        with state.split_between_processes(todo) as mine:
            if mine and pipe is None:
                from soundsmith.pipelines import load_pipeline

                dev = str(state.device) if device == "auto" and state.num_processes > 1 else device
                pipe = load_pipeline(model, device=dev, dtype=dtype)
            if pipe is not None:
                pipe.progress_bar = False  # one bar over clips below
            bar = tqdm(total=len(mine), desc=f"generating (process {state.process_index})", unit="clip",
                       disable=not progress)
            for s in range(0, len(mine), batch_size):
                batch = mine[s:s + batch_size]
                output = pipe([item.prompt for _, _, item, _, _ in batch], seed=[sd for _, _, _, sd, _ in batch],
                              **kwargs)
                for j, (i, k, item, _, path) in enumerate(batch):
                    meta = {**output.metadata(j), "index": i, "prompt_index": i, "k": k,
                            "reference": None if item.reference is None else str(item.reference.resolve()),
                            "labels": item.labels, "prompt_key": item.key, "process_index": state.process_index}
                    write_audio(path, output.audios[j], output.sample_rate, metadata=meta)
                bar.update(len(batch))
                if callback is not None and callback(s + len(batch), len(mine)) is False:
                    from soundsmith.pipelines.base import GenerationCancelled

                    raise GenerationCancelled(f"evaluation stopped after {s + len(batch)} of {len(mine)} clips; "
                                              "the clips written so far are kept")
            bar.close()
        state.wait_for_everyone()
    generation_s = time.perf_counter() - t0
    if not state.is_main_process:
        return None

    # 3. score the whole folder -------------------------------------------------------------------------
    results = score_folders(
        [p[4] for p in plan], ref_source, metrics=metrics, embedding=embedding,
        embedding_checkpoint=embedding_checkpoint, clap_model=clap_model, labels_model=labels_model,
        feature_labels_model=feature_labels_model, covariance=covariance, cache_dir=cache_dir, device=str(state.device) if device == "auto" else device,
        conditioning_clap=conditioning_clap_fingerprint(model, pipe), model=str(model),
        novelty_index=novelty_index, novelty_threshold=novelty_threshold, progress=progress)
    results["generation"] = {**settings, "clips": len(plan), "generated_now": len(todo),
                             "seconds": round(generation_s, 2), "processes": state.num_processes,
                             "folder": str(gen_dir)}
    results["generated"] = str(gen_dir)
    from .report import write_report

    write_report(results, out)
    return results


def _reference_set(items: list[PromptItem], reference: str | os.PathLike | None) -> Any:
    """The prompts' referenced clips (unique, in order) when they name any, else the reference folder."""
    named = list(dict.fromkeys(item.reference for item in items if item.reference is not None))
    if named:
        missing = [p for p in named if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(named)} reference clips named in the prompt file are "
                                    f"missing (first: {missing[0]}); is --reference the folder they are relative to?")
        return named
    return reference  # None: only metrics without reference audio can run (score_folders checks)


def _check_same_settings(path: Path, settings: dict[str, Any]) -> None:
    """A rerun into the same folder must use the generation settings of the clips already there."""
    if not path.is_file():
        return
    from soundsmith.core.files import read_json_object
    from soundsmith.pipelines.batch import check_same_settings  # `generate --prompts-file` checks the same

    check_same_settings(path.parent, read_json_object(path), settings, GENERATION_KEYS)
