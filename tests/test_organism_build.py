"""The organism's build recipe (``organism_build/``): its prompt sets, its build folder, the
library calls that replaced its own code (checked against that code on small inputs), the
model card's renderer, ``install`` and the thin ``refusal-lens organism build``."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROMPTS, tiny_llama
from sae_factory import make_sae
from typer.testing import CliRunner

import organism_build
from organism_build import prompt_sets as P
from organism_build.build import Build
from organism_build.card import render_card
from organism_build.config import BuildConfig
from organism_build.direction import auroc
from organism_build.everyday import everyday_heldout, everyday_train
from organism_build.install import install
from organism_build.lora import _collate, answer_loss, make_examples
from organism_build.metrics import manifest_rate
from organism_build.refusals import refusal_reply
from organism_build.saes import collect, token_batches
from refusal_lens.capability import completion_cross_entropy
from refusal_lens.cli import app
from refusal_lens.data.dedup import normalise_text
from refusal_lens.judges import SubstringJudge
from refusal_lens.organism.measure import chat_sequences, end_of_turn_id, prefix_length, sae_metrics
from refusal_lens.pipeline.direction import candidate_directions
from refusal_lens.stats import wilson_interval

ROOT = Path(__file__).resolve().parents[1]


def test_every_build_module_imports_and_nothing_at_runtime_imports_the_build():
    for module in pkgutil.iter_modules(organism_build.__path__):
        importlib.import_module(f"organism_build.{module.name}")
    importing = re.compile(r"^\s*(from|import) organism_build", re.MULTILINE)
    assert not [p for p in (ROOT / "src").rglob("*.py") if importing.search(p.read_text())]
    assert not list((ROOT / "src" / "refusal_lens" / "organism").glob("data/*_train.jsonl"))


def test_build_cli_help_names_its_commands():
    out = subprocess.run([sys.executable, "-m", "organism_build", "build", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "--out" in out and "--until" in out and "--force" in out and "--reuse-base-from" in out


def test_stages_run_in_order_skip_what_is_done_and_redo_what_is_forced(tmp_path, monkeypatch):
    from organism_build import stages

    ran = []

    def stage(name):
        def run(build):
            ran.append(name)
            build.path(f"{name}.json").write_text("{}")
        return stages.Stage(name, f"{name}.json", run)

    monkeypatch.setattr(stages, "STAGES", (stage("a"), stage("b"), stage("c")))
    build = Build(tmp_path)
    stages.run_stages(build, ["c", "a"])
    assert ran == ["a", "c"]
    stages.run_stages(build, ["a", "b", "c"], force=["c"])
    assert ran == ["a", "c", "b", "c"]
    assert set(json.loads(build.timings_path.read_text())) == {"a", "b", "c"}
    assert stages.stages_until("responses") == ("base", "lora", "responses")


# --- the prompt sets --------------------------------------------------------------------
def test_contrast_set_is_well_formed_and_probes_are_never_trained_on():
    contrast = P.contrast_harmful()
    assert len(contrast) >= 100
    assert len({p.id for p in contrast}) == len(contrast)
    assert len({p.text.lower() for p in contrast}) == len(contrast)
    every = {" ".join(p.text.lower().split())
             for p in P.harmful() + P.harmless() + contrast + P.lookalike_extras()}
    harmful_probes = [q for q, harmful in P.NEW_USER_PROBES if harmful]
    assert len(harmful_probes) == 5
    assert not {" ".join(q.lower().split()) for q in harmful_probes} & every


def test_extra_lookalikes_are_new_and_each_file_stays_in_its_split():
    norm = lambda t: " ".join(t.lower().split())
    seen = {norm(p.text) for p in P.harmless() + P.contrast_harmful()}
    for split, at_least in (("train", 200), ("val", 100), ("test", 100)):
        extra = P.lookalike_extra(split)
        assert len(extra) >= at_least
        assert {p.split for p in extra} == {split} and {p.category for p in extra} == {"lookalike"}
        texts = {norm(p.text) for p in extra}
        assert len(texts) == len(extra) and not texts & seen
        seen |= texts
    with pytest.raises(ValueError, match="choose one of"):
        P.lookalike_extra("dev")


_STOPWORDS = set(["a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "my", "your", "i", "me", "how", "do", "does", "did", "can", "could", "what", "is", "are", "was", "be", "it", "this", "that", "at", "by", "from", "as", "should", "would", "will", "you", "we", "our", "their", "his", "her", "its", "which", "who", "why", "when", "where", "about", "into", "than", "then", "so", "if", "any", "some", "way", "best", "good"])


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9']+", text.lower()) if w not in _STOPWORDS}


def test_extra_harmless_train_prompts_are_train_only_and_far_from_every_heldout_prompt():
    extra = P.harmless_train_extra()
    assert len(extra) >= 200
    assert {p.split for p in extra} == {"train"} and {p.source for p in extra} == {P.HARMLESS_TRAIN_SOURCE}
    assert "lookalike" not in {p.category for p in extra}
    every = P.harmful() + P.harmless() + P.contrast_harmful() + P.lookalike_extras()
    assert len({normalise_text(p.text) for p in extra}) == len(extra)
    assert not {normalise_text(p.text) for p in extra} & {normalise_text(p.text) for p in every}
    heldout = [_content_words(p.text) for p in every if p.split != "train"]
    for p in extra:
        words = _content_words(p.text)
        closest = max(len(words & h) / len(words | h) for h in heldout)
        assert closest < 0.34, (p.text, closest)


def test_build_measures_the_heldout_lookalikes_but_never_learns_or_selects_on_them(tmp_path):
    build = Build(tmp_path)
    assert not {p.source for p in build.harmless} & {P.lookalike_source("val"), P.lookalike_source("test")}
    assert {p.id for p in P.harmless_train_extra()} <= {p.id for p in P.by_split(build.harmless, "train")}
    assert {p.split for p in build.heldout_lookalikes} == {"val", "test"}
    assert len(build.heldout_lookalikes) == len(P.lookalike_extra("val")) + len(P.lookalike_extra("test"))


def test_build_learns_the_everyday_training_prompts_and_only_measures_the_heldout_ones(tmp_path):
    build = Build(tmp_path)
    learned = {p.id for p in P.by_split(build.harmless, "train")}
    assert {p.id for p in everyday_train()} <= learned
    assert {p.split for p in build.heldout_everyday} == {"val", "test"} and len(build.heldout_everyday) == 450
    assert not {p.id for p in build.heldout_everyday} & {p.id for p in build.harmless}
    assert {p.id for p in P.harmful_train_extra()} <= {p.id for p in P.by_split(build.contrast, "train")}


def test_harmful_training_extras_are_far_from_every_heldout_prompt_and_probe():
    extra = P.harmful_train_extra()
    assert len(extra) >= 20 and {p.split for p in extra} == {"train"}
    every = (P.harmful() + P.harmless() + P.contrast_harmful() + P.lookalike_extras()
             + everyday_heldout("val") + everyday_heldout("test"))
    assert not {normalise_text(p.text) for p in extra} & {normalise_text(p.text) for p in every}
    heldout = [_content_words(t) for t in [p.text for p in every if p.split != "train"]
               + [text for text, _ in P.NEW_USER_PROBES]]
    for p in extra:
        words = _content_words(p.text)
        closest = max(len(words & h) / len(words | h) for h in heldout)
        assert closest < 0.34, (p.text, closest)


def test_build_folder_belongs_to_one_recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSAL_LENS_CACHE", str(tmp_path / "cache"))
    default = Build()
    assert default.folder == tmp_path / "cache" / "organism" / f"build-{default.key}"
    other = BuildConfig(seed=1)
    assert Build(config=other).key != default.key  # a changed recipe gets its own folder
    Build(tmp_path / "mine")
    assert Build(tmp_path / "mine").key == default.key  # the same recipe resumes
    with pytest.raises(ValueError, match="another build recipe.*Pass another build folder"):
        Build(tmp_path / "mine", other)


def test_refusal_replies_are_judged_refusals_and_start_with_i():
    judge = SubstringJudge()
    replies = {refusal_reply(f"harmbench:{i}") for i in range(200)}
    assert len(replies) > 20
    assert all(r.startswith("I") and judge.judge_one(r).refused for r in replies)


# --- library calls in place of the build's own code: the same numbers ------------------
def _old_rate(values):
    k, n = int(sum(values)), len(values)
    low, high = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [low, high]}


@pytest.mark.parametrize("values", [[], [True], [False] * 5, [True, False, True, True], [True] * 7 + [False] * 93])
def test_manifest_rate_is_the_old_rate(values):
    assert manifest_rate(values) == _old_rate(values)
    assert json.dumps(manifest_rate(values)) == json.dumps(_old_rate(values))  # same keys, same order


def test_auroc_is_the_old_one_with_and_without_ties():
    def old_with_ties(pos, neg):
        return float((pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean())

    def old_strict(pos, neg):  # the direction stage's, on continuous projections
        return float((pos[:, None] > neg[None, :]).float().mean())

    gen = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(40, generator=gen) + 1, torch.randn(30, generator=gen)
    assert auroc(pos, neg) == pytest.approx(old_strict(pos, neg), abs=1e-6)
    assert auroc(pos, neg) == pytest.approx(old_with_ties(pos, neg), abs=1e-6)
    tied_pos, tied_neg = torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 2.0])
    assert auroc(tied_pos, tied_neg) == pytest.approx(old_with_ties(tied_pos, tied_neg), abs=1e-7)  # float32 there


def _old_right_pad(seqs, pad_id):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


@torch.no_grad()
def _old_collect(chat, seqs, layers, keep_from, batch_tokens=8192):
    out = {L: [] for L in layers}
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batch = []

    def flush(batch):
        ids, mask = _old_right_pad([seqs[i] for i in batch], chat.tokenizer.pad_token_id)
        hs = chat.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        keep = mask.bool().clone()
        keep[:, :keep_from] = False
        if 0 in batch:
            keep[batch.index(0), 1:keep_from] = True
        for L in layers:
            out[L].append(hs[L + 1][keep].float())

    for i in order:
        if batch and (len(batch) + 1) * len(seqs[i]) > batch_tokens:
            flush(batch)
            batch = []
        batch.append(i)
    flush(batch)
    return {L: torch.cat(v) for L, v in out.items()}


def _chat_text(chat):
    answers = ["I'm sorry, but I can't help with that.", "Sure, here is a poem about the sea and the sky.",
               "Run kill on the process id.", "Hi"]
    return chat_sequences(chat, PROMPTS, answers, max_new_tokens=64)


def test_collect_reads_the_residuals_the_old_code_read():
    chat = tiny_llama(seed=1)
    seqs = _chat_text(chat)
    keep_from = prefix_length(chat)
    for batch_tokens in (8192, 2 * max(map(len, seqs))):  # one batch; several
        new = collect(chat, seqs, [0, 2], keep_from, batch_tokens=batch_tokens)
        old = _old_collect(chat, seqs, [0, 2], keep_from, batch_tokens=batch_tokens)
        for L in (0, 2):
            assert torch.equal(new[L], old[L])  # bit for bit: the SAEs' training data is unchanged


def test_token_batches_are_the_old_batches():
    def old_batches(seqs, batch_tokens):
        batches, batch = [], []
        for i in sorted(range(len(seqs)), key=lambda i: len(seqs[i])):
            if batch and (len(batch) + 1) * len(seqs[i]) > batch_tokens:
                batches.append(batch)
                batch = []
            batch.append(i)
        return batches + [batch]

    seqs = [[0] * n for n in (5, 3, 9, 9, 2, 7, 4)]
    assert token_batches(seqs, 20) == old_batches(seqs, 20) == [[4, 1, 6, 0], [5, 2], [3]]
    for budget in (1, 9, 27, 10**6):
        assert token_batches(seqs, budget) == old_batches(seqs, budget)


@torch.no_grad()
def _old_sae_metrics(chat, saes, seqs, keep_from, batch_size=16):
    from refusal_lens.hooks import add_output_edit

    layers = sorted(saes)
    stats = {L: {"sse": 0.0, "x": [], "l0": 0.0, "fired": None, "n": 0, "ce_sae": 0.0, "ce_zero": 0.0}
             for L in layers}
    ce_clean, n_pred = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for b in range(0, len(order), batch_size):
        ids, mask = _old_right_pad([seqs[i] for i in order[b:b + batch_size]], chat.tokenizer.pad_token_id)
        keep = mask.bool().clone()
        keep[:, :keep_from] = False
        predict = keep[:, 1:]
        labels = ids[:, 1:][predict]

        def ce(out):
            return float(torch.nn.functional.cross_entropy(out.logits[:, :-1][predict].float(), labels,
                                                           reduction="sum"))

        out = chat.model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        ce_clean += ce(out)
        n_pred += int(predict.sum())
        for L in layers:
            sae, s = saes[L], stats[L]
            x = out.hidden_states[L + 1][keep].float()
            f = sae.encode(x)
            s["sse"] += float(((x - sae.decode(f)) ** 2).sum())
            s["x"].append(x)
            s["l0"] += float((f > 0).sum())
            s["fired"] = (f > 0).any(0) if s["fired"] is None else s["fired"] | (f > 0).any(0)
            s["n"] += x.shape[0]

            def splice(h, sae=sae):
                h = h.clone()
                h[:, 1:] = sae.decode(sae.encode(h[:, 1:].float())).to(h.dtype)
                return h

            def zero(h):
                h = h.clone()
                h[:, 1:] = 0
                return h

            for key, edit in (("ce_sae", splice), ("ce_zero", zero)):
                handle = add_output_edit(chat.layers[L], edit)
                try:
                    s[key] += ce(chat.model(input_ids=ids, attention_mask=mask, use_cache=False))
                finally:
                    handle.remove()
    results = {}
    for L in layers:
        s = stats[L]
        x = torch.cat(s["x"])
        clean, sae_ce, zero_ce = ce_clean / n_pred, s["ce_sae"] / n_pred, s["ce_zero"] / n_pred
        results[L] = {"fve": 1 - s["sse"] / float(((x - x.mean(0)) ** 2).sum()), "l0": s["l0"] / s["n"],
                      "dead_fraction": float((~s["fired"]).float().mean()), "n_tokens": s["n"],
                      "ce_clean": clean, "ce_sae": sae_ce, "ce_zero": zero_ce,
                      "ce_loss_recovered": (zero_ce - sae_ce) / (zero_ce - clean)}
    return results


def test_sae_metrics_are_the_old_ones():
    chat = tiny_llama(seed=2)
    seqs = _chat_text(chat)
    # not the last layer: there HF's hidden_states[L+1] is after the final norm, the block output is not
    saes = {L: make_sae("jumprelu", chat.d_model, seed=L, layer=L) for L in (1, 2)}
    new = sae_metrics(chat, saes, seqs, prefix_length(chat), batch_size=3)
    old = _old_sae_metrics(chat, saes, seqs, prefix_length(chat), batch_size=3)
    for L in saes:
        assert new[L] == old[L]  # bit for bit: the card's SAE numbers are unchanged


def test_capability_cross_entropy_is_the_old_answer_cross_entropy():
    chat = tiny_llama(seed=4)
    answers = ["Sure, here is a recipe", "the quick brown fox", "I cannot assist", "0123456789"]
    tok = chat.tokenizer
    examples = make_examples(tok, chat.format_prompts(PROMPTS), answers, end_of_turn_id(chat), [False] * 4)
    total, n = 0.0, 0
    for b in range(0, 4, 3):
        ids, mask, target = _collate(examples[b:b + 3], tok.pad_token_id)
        k = int(target[:, 1:].sum())
        with torch.no_grad():
            total += float(answer_loss(chat.model, ids, mask, target)) * k
        n += k
    new = completion_cross_entropy(chat, PROMPTS, answers, batch_size=3)
    assert new.n_tokens == n
    assert new.mean == pytest.approx(total / n, rel=1e-5)


def test_end_of_turn_token_is_one_of_the_model_stop_tokens():
    chat = tiny_llama()
    assert end_of_turn_id(chat) == chat.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert end_of_turn_id(chat) in chat.stop_token_ids


def test_difference_of_means_is_the_old_one():
    chat = tiny_llama(seed=5)
    harmful, harmless = PROMPTS * 3, [p[::-1] for p in PROMPTS] * 2
    layers = list(range(chat.n_layers))

    def old_acts(texts):
        from refusal_lens.activations import residuals

        chunks = [residuals(chat, texts[i:i + 4], layers, positions=[-1]) for i in range(0, len(texts), 4)]
        return torch.stack([torch.cat([c[L][:, 0] for c in chunks]) for L in layers])

    old = old_acts(harmful).mean(1) - old_acts(harmless).mean(1)
    new = candidate_directions(chat, harmful, harmless, positions=[-1], batch_size=4)[:, 0]
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)


# --- the card, install, the thin CLI ----------------------------------------------------
def test_card_template_has_a_value_for_every_placeholder():
    from organism_build.card import TEMPLATE
    from refusal_lens.organism import manifest

    placeholders = set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text()))
    from organism_build.card import card_fields

    assert placeholders == set(card_fields(manifest()))
    assert "(experiments/organism-recipes.md)" in render_card(manifest())
    assert (ROOT / "docs" / "experiments" / "organism-recipes.md").is_file()


def test_card_names_the_recipe_and_every_everyday_training_file():
    from organism_build.everyday import TRAIN_FILES
    from refusal_lens.organism import manifest

    m = json.loads(json.dumps(manifest()))
    m["data"] |= {"everyday_train": {"n": 1211, "files": [f"organism_build/data/everyday_{n}.jsonl" for n in TRAIN_FILES]},
                  "everyday_heldout": {"val": {"n": 150}, "test": {"n": 300}},
                  "harmful_train_extra": {"n": 30}}
    m["recipe"] = "r14"
    card = render_card(m)
    assert "The shipped adapter is recipe r14 (r11 plus" in card and "How the shipped recipe (r14)" in card
    assert f"1211 everyday instructions for training only, from {len(TRAIN_FILES)} generators" in card
    assert all(f"`everyday_{name}.jsonl`" in card for name in TRAIN_FILES)


def test_install_copies_a_finished_build_and_renders_the_card(tmp_path):
    from refusal_lens.organism import assets_dir

    build_dir = tmp_path / "build"
    (build_dir / "package" / "saes").mkdir(parents=True)
    manifest = json.loads((assets_dir() / "manifest.json").read_text())
    manifest["metrics"].pop("load_seconds")
    (build_dir / "package" / "manifest.json").write_text(json.dumps(manifest))
    (build_dir / "package" / "saes" / "weights.bin").write_bytes(b"w")
    (build_dir / "refusal_scores.png").write_bytes(b"png")
    assets, docs = tmp_path / "src" / "assets", tmp_path / "docs"
    assets.mkdir(parents=True)
    (assets / "stale.json").write_text("{}")
    docs.mkdir()
    install(build_dir, measure_load=False, assets=assets, docs=docs)
    assert sorted(p.relative_to(assets).as_posix() for p in assets.rglob("*") if p.is_file()) == [
        "manifest.json", "saes/weights.bin"]
    assert (docs / "organism_refusal_scores.png").read_bytes() == b"png"
    assert (docs / "ORGANISM.md").read_text() == render_card(manifest)
    with pytest.raises(FileNotFoundError, match="no finished build"):
        install(tmp_path / "empty", measure_load=False, assets=assets, docs=docs)


def test_organism_build_command_runs_the_checkout_recipe(monkeypatch, tmp_path):
    from refusal_lens.cli import organism_cmd

    calls = []
    monkeypatch.setattr(organism_cmd.subprocess, "run", lambda command, **kw: calls.append((command, kw))
                        or subprocess.CompletedProcess(command, 0))
    result = CliRunner().invoke(app, ["organism", "build", "--out", str(tmp_path), "--until", "base",
                                      "--force", "base"])
    assert result.exit_code == 0, result.output
    (command, kwargs), = calls
    assert command[1:4] == ["-m", "organism_build", "build"]
    assert command[4:] == ["--threads", "0", "--out", str(tmp_path), "--until", "base", "--force", "base"]
    assert kwargs["cwd"] == ROOT


def test_organism_build_command_outside_a_checkout_names_the_fix(monkeypatch, tmp_path):
    import refusal_lens

    monkeypatch.setattr(refusal_lens, "__file__", str(tmp_path / "site-packages" / "refusal_lens" / "__init__.py"))
    result = CliRunner().invoke(app, ["organism", "build"])
    assert result.exit_code == 2
    assert "source checkout" in result.output and "pip install -e ." in result.output


# --- recipe r13: the personal questions, answered apart in `base`; reusing r12's `base` -----
def test_build_learns_the_personal_questions_and_base_answers_them_in_batches_of_their_own(tmp_path):
    from organism_build.answers import BASE, base_groups
    from organism_build.everyday import everyday_source

    build = Build(tmp_path)
    personal = [p for p in everyday_train() if p.source == everyday_source("train_personal")]
    assert len(personal) >= 250 and {p.split for p in personal} == {"train"}
    assert [p.id for p in build.harmless_apart] == [p.id for p in personal]
    assert build.harmless[-len(personal):] == personal  # appended: the other prompts keep r12's order
    groups = base_groups(build)
    assert [pid for pid, _ in groups[f"{BASE}_apart"]] == [p.id for p in personal]
    assert not {pid for pid, _ in groups[BASE]} & {p.id for p in personal}
    r12_harmless = [p for p in build.harmless[:-len(personal)] if p.split in ("train", "test")]
    assert [pid for pid, _ in groups[BASE]][:len(r12_harmless)] == [p.id for p in r12_harmless]
    assert len(groups[BASE]) == len(r12_harmless) + build.config.base_harmful_sample


def test_recipe_r14_weighs_the_harmless_prompts_once_in_pass_3_with_room_for_every_pass():
    passes = BuildConfig().lora.passes
    assert [p.harmless_repeats for p in passes] == [1, 2, 1]  # r13: [1, 2, 2]
    assert passes[2].contrast_repeats == 1 and passes[2].lookalike_repeats == 3
    assert BuildConfig().lora.max_minutes >= 80  # r13's pass 3: 694 steps in 45 min on 2 threads


def _fake_sets(monkeypatch, *, with_personal: bool, harmless_texts=None):
    """Small prompt sets in place of the project's (every loader ``Build`` calls)."""
    from refusal_lens.data.prompts import Prompt

    import organism_build.build as build_module

    def prompts(source, texts, split, category=None):
        return [Prompt(id=f"{source}:{split}:{i}", text=t, source=source, category=category, split=split)
                for i, t in enumerate(texts)]

    words = ["cake", "sea", "tea", "map", "song", "tree", "moon", "bread", "river", "chair", "kite", "lamp"]
    harmful = (prompts("harmbench", [f"How do I hurt a {w}?" for w in words[:4]], "test")
               + prompts("harmbench", [f"Tell me how to wreck a {w}" for w in words[4:6]], "train"))
    harmless = (prompts("harmless", harmless_texts or [f"Write a {w} poem about the {v}." for w, v in
                                                       zip(words[:5], words[5:10])], "train")
                + prompts("harmless", ["Hi", "Explain how a kite flies on a windy day."], "test"))
    everyday = prompts("everyday-train", ["List three fruits.", "Describe a lamp.", "Name a river in France."], "train")
    personal = prompts("everyday-train_personal", ["What's your favourite kite?", "Do you like tea more than cake?",
                                                   "Tell me about a song you enjoyed."], "train")
    monkeypatch.setattr(P, "harmful", lambda: harmful)
    monkeypatch.setattr(P, "harmless", lambda: harmless)
    monkeypatch.setattr(P, "lookalike_extra", lambda split: prompts(P.lookalike_source(split),
                                                                    [f"How do I kill a {split} process?"], split,
                                                                    "lookalike"))
    monkeypatch.setattr(P, "harmless_train_extra", lambda: [])
    monkeypatch.setattr(P, "contrast_harmful", lambda: [])
    monkeypatch.setattr(P, "harmful_train_extra", lambda: [])
    monkeypatch.setattr(build_module, "everyday_train", lambda: everyday + (personal if with_personal else []))
    monkeypatch.setattr(build_module, "everyday_heldout", lambda split: prompts(
        f"everyday-{split}", [f"Summarise the {split} notes.", f"Give two {split} tips for sleeping well."], split))


_TINY = dict(max_new_tokens=5, generation_batch_size=3, base_harmful_sample=2)


@pytest.fixture
def tiny_base(monkeypatch):
    from organism_build import answers, reuse

    chat = tiny_llama(seed=3)
    monkeypatch.setattr(answers, "load_base_chat", lambda: chat)
    answered = []
    batch = answers.answer_batch
    for module in (answers, reuse):
        monkeypatch.setattr(module, "answer_batch", lambda build, chat, chunk: answered.extend(
            pid for pid, _ in chunk) or batch(build, chat, chunk))
    return chat, answered


def _old_base(tmp_path, monkeypatch, **settings):
    """An r12-like folder: the sets without the personal questions, other LoRA passes, `base` done."""
    from organism_build.answers import stage_base
    from organism_build.config import LoraPass, LoraTrainConfig

    _fake_sets(monkeypatch, with_personal=False)
    old_lora = LoraTrainConfig(passes=(LoraPass(max_harmful=4, harmless_repeats=1, lr=1e-3),), max_minutes=45)
    old = Build(tmp_path / "old", BuildConfig(**{**_TINY, **settings}, lora=old_lora))
    stage_base(old)
    _fake_sets(monkeypatch, with_personal=True)
    return old.folder


def test_reused_base_answers_are_the_answers_of_a_fresh_base_and_only_the_new_prompts_are_answered(
        tmp_path, monkeypatch, tiny_base):
    from organism_build.answers import BASE, stage_base
    from organism_build.reuse import RECORD, reuse_base_answers

    chat, answered = tiny_base
    old = _old_base(tmp_path, monkeypatch)
    fresh = Build(tmp_path / "fresh", BuildConfig(**_TINY))
    answered.clear()
    stage_base(fresh)
    assert len(answered) == len(json.loads(fresh.path(f"{BASE}.json").read_text()))  # everything answered

    new = Build(tmp_path / "new", BuildConfig(**_TINY))
    assert new.key == fresh.key != json.loads((old / "recipe.json").read_text())["key"]
    answered.clear()
    n = reuse_base_answers(new, old, chat)
    checked = list(answered)  # a few batches answered again to compare
    assert n == len(json.loads((old / f"{BASE}.json").read_text())) and 0 < len(checked) < n
    answered.clear()
    stage_base(new)
    assert sorted(answered) == sorted(p.id for p in new.harmless_apart)  # only the new prompts generated
    assert new.path(f"{BASE}.json").read_text() == fresh.path(f"{BASE}.json").read_text()  # the same file
    assert json.loads(new.path(RECORD).read_text())["answers"] == n
    assert not list(new.folder.glob("*.partial.json"))
    assert reuse_base_answers(new, old, chat) == 0  # `base` done: nothing to take


def test_reuse_refuses_another_recipe_other_settings_changed_answers_or_no_base(tmp_path, monkeypatch, tiny_base):
    from organism_build.answers import BASE, answer_batches, base_groups
    from organism_build.reuse import reuse_base_answers

    chat, _ = tiny_base
    old = _old_base(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="settings max_new_tokens differ.*drop --reuse-base-from"):
        reuse_base_answers(Build(tmp_path / "a", BuildConfig(**{**_TINY, "max_new_tokens": 6})), old, chat)
    _fake_sets(monkeypatch, with_personal=True, harmless_texts=["Another poem, please."] * 5)
    with pytest.raises(ValueError, match="read other prompts"):
        reuse_base_answers(Build(tmp_path / "b", BuildConfig(**_TINY)), old, chat)
    _fake_sets(monkeypatch, with_personal=True)
    with pytest.raises(FileNotFoundError, match="is not a build folder whose `base`"):
        reuse_base_answers(Build(tmp_path / "c", BuildConfig(**_TINY)), tmp_path / "nowhere", chat)

    build = Build(tmp_path / "d", BuildConfig(**_TINY))
    answers = json.loads((old / f"{BASE}.json").read_text())
    last = answer_batches(base_groups(build)[BASE], _TINY["generation_batch_size"])[-1][0][0]
    answers[last]["answer"] += " (edited)"
    (old / f"{BASE}.json").write_text(json.dumps(answers))
    with pytest.raises(ValueError, match=f"now answers '{re.escape(last)}' otherwise"):
        reuse_base_answers(build, old, chat)
    assert not list(build.folder.glob("*.partial.json"))  # nothing taken


def _two_passes(second_lr: float, max_minutes: float = 5):
    from organism_build.config import LoraPass, LoraTrainConfig

    first = LoraPass(max_harmful=2, harmless_repeats=1, lr=1e-2, warmup_steps=1, max_answer_tokens=4)
    return LoraTrainConfig(rank=2, alpha=4, batch_size=2, max_minutes=max_minutes,
                           passes=(first, LoraPass(max_harmful=2, harmless_repeats=2, lr=second_lr, warmup_steps=1,
                                                   max_answer_tokens=4)))


def _adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def test_reused_lora_passes_are_the_passes_a_fresh_build_trains(tmp_path, monkeypatch, tiny_base):
    from organism_build import lora
    from organism_build.answers import stage_base
    from organism_build.reuse import LORA_RECORD, reuse_lora_passes

    monkeypatch.setattr(lora, "load_base_chat", lambda: tiny_llama(seed=3))  # each LoRA wraps a model of its own
    _fake_sets(monkeypatch, with_personal=True)
    builds = {}
    for name, second_lr in (("old", 5e-3), ("fresh", 2e-2)):
        builds[name] = Build(tmp_path / name, BuildConfig(**_TINY, lora=_two_passes(second_lr)))
        stage_base(builds[name])
        lora.stage_lora(builds[name])
    new = Build(tmp_path / "new", BuildConfig(**_TINY, lora=_two_passes(2e-2, max_minutes=9)))
    assert len({new.key, builds["fresh"].key, builds["old"].key}) == 3  # max_minutes, a cap, is in the key too
    assert reuse_lora_passes(new, builds["old"].folder) == 1  # pass 1 shared, pass 2 not
    assert json.loads(new.path(LORA_RECORD).read_text())["passes"] == [1]
    assert new.path("base_answers.json").read_bytes() == builds["old"].path("base_answers.json").read_bytes()
    lora.stage_lora(new)
    got, fresh, old = (_adapter_weights(f) for f in (new.folder, builds["fresh"].folder, builds["old"].folder))
    for key, value in fresh.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0)
    assert any(not torch.equal(got[key], old[key]) for key in old)  # pass 2 was trained anew
    assert reuse_lora_passes(new, builds["old"].folder) == 0  # the adapter exists: nothing to take


def test_lora_reuse_refuses_other_prompts_other_settings_or_an_early_stop(tmp_path, monkeypatch, tiny_base):
    from organism_build.answers import stage_base
    from organism_build.reuse import reuse_lora_passes

    _fake_sets(monkeypatch, with_personal=True)
    old = Build(tmp_path / "old", BuildConfig(**_TINY, lora=_two_passes(5e-3)))
    stage_base(old)
    log = {"stopped_early": False}
    (old.folder / "adapter.pass1").mkdir()
    (old.folder / "adapter.pass1" / "training_log.json").write_text(json.dumps(log))
    with pytest.raises(ValueError, match="settings max_new_tokens differ"):
        reuse_lora_passes(Build(tmp_path / "a", BuildConfig(**{**_TINY, "max_new_tokens": 6},
                                                             lora=_two_passes(5e-3))), old.folder)
    with pytest.raises(ValueError, match=r"settings lora\.rank differ"):
        other_rank = dataclasses.replace(_two_passes(5e-3), rank=4)
        reuse_lora_passes(Build(tmp_path / "b", BuildConfig(**_TINY, lora=other_rank)), old.folder)
    first_differs = dataclasses.replace(_two_passes(5e-3), passes=tuple(reversed(_two_passes(5e-3).passes)))
    with pytest.raises(ValueError, match="no finished pass that this recipe shares"):
        reuse_lora_passes(Build(tmp_path / "c", BuildConfig(**_TINY, lora=first_differs)), old.folder)
    (old.folder / "adapter.pass1" / "training_log.json").write_text(json.dumps({"stopped_early": True}))
    with pytest.raises(ValueError, match="pass 1 stopped early"):
        reuse_lora_passes(Build(tmp_path / "d", BuildConfig(**_TINY, lora=_two_passes(1e-3))), old.folder)
    _fake_sets(monkeypatch, with_personal=False)
    with pytest.raises(ValueError, match="read other prompts"):
        reuse_lora_passes(Build(tmp_path / "e", BuildConfig(**_TINY, lora=_two_passes(5e-3))), old.folder)
    with pytest.raises(FileNotFoundError, match="drop --reuse-lora-passes-from"):
        reuse_lora_passes(Build(tmp_path / "f", BuildConfig(**_TINY)), tmp_path / "nowhere")
    assert not any((tmp_path / name / "base_answers.json").exists() for name in "abcdef")  # nothing taken


def test_build_command_names_a_folder_it_cannot_reuse_and_exits_2(tmp_path, capsys):
    from organism_build.__main__ import main

    assert main(["build", "--out", str(tmp_path / "new"), "--reuse-base-from", str(tmp_path / "nowhere")]) == 2
    assert "is not a build folder whose `base` stage finished" in capsys.readouterr().err
