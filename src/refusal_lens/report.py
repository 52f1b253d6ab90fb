"""Figures and a self-contained ``report.html`` (images inlined, no network needed to open it)."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from refusal_lens.artifacts import write_atomic  # noqa: E402

MAIN_METHODS = ("none", "directional_ablation", "minimal_shared", "interaction", "random_1")


def _save(fig, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    data = buffer.getvalue()
    write_atomic(folder / f"{name}.png", lambda tmp: tmp.write_bytes(data))
    return base64.b64encode(data).decode()


def fig_scores(per_prompt: dict, folder: Path) -> str | None:
    if not per_prompt:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name in [m for m in MAIN_METHODS if m in per_prompt]:
        ax.hist([r["refusal_score"] for r in per_prompt[name]], bins=20, alpha=0.5, label=name)
    ax.axvline(0, color="black", lw=1)
    ax.set_xlabel("refusal score (log-odds of a refusal token)")
    ax.set_ylabel("held-out harmful prompts")
    ax.legend(fontsize=8)
    ax.set_title("Refusal scores before and after each intervention")
    return _save(fig, folder, "refusal_scores")


def fig_features_per_layer(results: dict, folder: Path) -> str | None:
    minimal = results.get("minimal_set", {})
    if not minimal:
        return None
    fig, ax = plt.subplots(figsize=(7, 3))
    for key, label in (("shared", "shared (∩ seeds)"), ("shared_union", "shared (∪ seeds)")):
        counts = Counter(f["layer"] for f in minimal.get(key, []))
        layers = sorted(counts)
        ax.bar([L + (0.2 if key == "shared_union" else -0.2) for L in layers], [counts[L] for L in layers],
               width=0.4, label=label)
    candidates = Counter(c["layer"] for c in results.get("candidates", []))
    ax.set_xticks(sorted(candidates))
    ax.set_xlabel("layer")
    ax.set_ylabel("features")
    ax.legend(fontsize=8)
    ax.set_title("Minimal-set features per layer")
    return _save(fig, folder, "features_per_layer")


def fig_interactions(gram: dict, folder: Path) -> str | None:
    if not gram or not gram.get("values"):
        return None
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * len(gram["cols"]) + 2), max(3, 0.25 * len(gram["rows"]) + 1.5)))
    image = ax.imshow(gram["values"], cmap="RdBu_r", aspect="auto")
    vmax = max(abs(v) for row in gram["values"] for v in row) or 1
    image.set_clim(-vmax, vmax)
    ax.set_yticks(range(len(gram["rows"])), [f"L{r[0]}:{r[1]}" for r in gram["rows"]], fontsize=6)
    ax.set_xticks(range(len(gram["cols"])), [f"L{c[0]}:{c[1]}" for c in gram["cols"]], fontsize=6, rotation=90)
    ax.set_xlabel("minimal-set features")
    ax.set_ylabel("top interacting features")
    fig.colorbar(image, ax=ax, label="<v_i, v_j>")
    ax.set_title("Factorization-machine interactions")
    return _save(fig, folder, "interactions")


def fig_asr(evaluation: dict, folder: Path) -> str | None:
    if not evaluation:
        return None
    names = list(evaluation)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names)), 3.5))
    rates = [evaluation[n]["asr"] for n in names]
    lower = [evaluation[n]["asr"] - evaluation[n]["ci_low"] for n in names]
    upper = [evaluation[n]["ci_high"] - evaluation[n]["asr"] for n in names]
    ax.bar(range(len(names)), rates, yerr=[lower, upper], capsize=3, color="tab:red", alpha=0.7)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("attack success rate")
    ax.set_title(f"ASR on held-out harmful prompts (n={evaluation[names[0]]['n']}, 95% Wilson CI)")
    return _save(fig, folder, "asr")


def _img(data: str | None, alt: str) -> str:
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">' if data else f"<p><i>No {alt}.</i></p>"


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(out: Path, results: dict, done: dict) -> Path:
    figures = out / "figures"
    per_prompt = done["evaluation"].load_json("evaluation.json")["per_prompt"] if "evaluation" in done else {}
    gram = done["interactions"].load_json("interactions.json").get("gram") if "interactions" in done else None
    images = {
        "scores": fig_scores(per_prompt, figures),
        "layers": fig_features_per_layer(results, figures),
        "interactions": fig_interactions(gram, figures),
        "asr": fig_asr(results.get("evaluation", {}), figures),
    }
    parts = ["<h1>refusal-lens report</h1>",
             f"<p>Model <b>{html.escape(results['config']['model']['name'])}</b>, SAEs "
             f"<b>{html.escape(results['config']['saes']['source'])}</b>, created {results['created']}.</p>"]
    if "direction" in results:
        d = results["direction"]
        parts.append(f"<h2>Refusal direction</h2><p>Layer {d['layer']}, position {d['position']} ({d['variant']}): "
                     f"bypass {d['bypass']:+.2f}, induce {d['induce']:+.2f}, KL {d['kl']:.3f}; filters passed: {html.escape(str(d.get('filters')))}.</p>")
    if "evaluation" in results:
        rows = [[name, f"{m['asr']:.1%}", f"[{m['ci_low']:.1%}, {m['ci_high']:.1%}]", m["n"],
                 f"{m['score_flip_rate']:.1%}", m["n_features"],
                 f"{m['capability']['delta_cross_entropy']:+.3f}" if "capability" in m else "–"]
                for name, m in results["evaluation"].items()]
        parts += ["<h2>Attack success on held-out prompts</h2>",
                  _table(rows, ["method", "ASR", "95% CI", "n", "score < 0", "features",
                                "Δ CE on harmless answers"]), _img(images["asr"], "ASR bars"),
                  "<p>Δ CE: capability cost, the increase in cross-entropy (nats/token) of the unmodified"
                  " model's own greedy answers to held-out harmless prompts under the method.</p>"]
    parts += ["<h2>Refusal-score distributions</h2>", _img(images["scores"], "score histogram")]
    if "minimal_set" in results:
        m = results["minimal_set"]
        parts += ["<h2>Minimal feature set</h2>",
                  f"<p>Shared (intersection over seeds): {len(m['shared'])} features; union: {len(m['shared_union'])}. "
                  f"Prompts not flippable with these candidates: {len(m['not_flippable'])}. "
                  f"Verification (greedy generation, substring judge): {html.escape(str(m['verification']))}.</p>",
                  _img(images["layers"], "features per layer")]
    if "dormant" in results:
        d = results["dormant"]
        parts.append(f"<h2>Dormant features</h2><p>{len(d.get('dormant_on_every_prompt') or [])} of "
                     f"{d.get('n_features')} shared-set features never fire on any search prompt; mean dormant per "
                     f"prompt {d.get('mean_dormant_per_prompt')}; jailbreak fails without them on a fraction "
                     f"{d.get('fraction_jailbreak_fails_without_dormant')} of prompts; mean woken up "
                     f"{d.get('mean_woke_up')}.</p>")
    if "interactions" in results:
        i = results["interactions"]
        sweep = [[r["k"], *(f"{r[k]:.0%}" for k in ("fm_with_minimal", "fm_only", "probe_with_minimal", "probe_only"))]
                 for r in i["sweep"]]
        parts += ["<h2>Interactions</h2>",
                  f"<p>Factorization machine on {i['fm']['n_features']} features: test accuracy "
                  f"{i['fm']['test_accuracy']:.1%}.</p>",
                  _table(sweep, ["K", "FM top-K + minimal", "FM top-K", "probe top-K + minimal", "probe top-K"]),
                  _img(images["interactions"], "interaction heatmap")]
    if per_prompt:
        names = [n for n in MAIN_METHODS if n in per_prompt]
        rows = []
        for j, base in enumerate(per_prompt["none"]):
            row = [base["prompt"][:90]]
            for name in names:
                r = per_prompt[name][j]
                row.append(f"{'refused' if r['refused'] else 'ANSWERED'} ({r['refusal_score']:+.1f}): {r['response'][:70]}")
            rows.append(row)
        parts += ["<h2>Per prompt</h2>", _table(rows, ["prompt", *names])]
    cost = [[stage, c.get("forward_passes"), c.get("wall_time_s")] for stage, c in results.get("cost", {}).items()]
    parts += ["<h2>Cost</h2>", _table(cost, ["stage", "forward passes", "wall time (s)"]),
              f"<h2>Versions</h2><pre>{html.escape(str(results['versions']))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}"
             "img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>refusal-lens report</title><style>{style}</style>" \
           f"</head><body>{''.join(parts)}</body></html>"
    return write_atomic(out / "report.html", lambda tmp: tmp.write_text(page))
