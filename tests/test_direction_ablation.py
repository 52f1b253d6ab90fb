"""Directional ablation where Arditi et al. ablate: every block's input, attention output and MLP
output, checked against a manual forward of the tiny models that projects out at those points."""

import pytest
import torch
from conftest import PROMPTS

from refusal_lens.activations import model_inputs
from refusal_lens.interventions import DirectionalAblation, intervene, project_out
from refusal_lens.interventions.direction import residual_writers


def block_calls(chat_model, batch):
    """Each block's keyword arguments (mask, rotary embeddings, ...) and the stream entering block 0,
    from a clean forward: the reference reuses them, they do not depend on the stream."""
    calls, entering = [], {}

    def record(_module, args, kwargs):
        if not calls:
            entering["hidden"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        calls.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

    handles = [block.register_forward_pre_hook(record, with_kwargs=True) for block in chat_model.layers]
    try:
        with torch.no_grad():
            chat_model.model(**model_inputs(batch), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return entering["hidden"], calls


def reference_block_outputs(chat_model, batch, unit, layers=None):
    """A manual forward, block by block: the direction projected out of each ablated block's input,
    of what its attention adds and of what its MLP adds (after the post-norms where it has them)."""
    hidden, calls = block_calls(chat_model, batch)
    outputs = []
    with torch.no_grad():
        for index, (block, kwargs) in enumerate(zip(chat_model.layers, calls)):
            ablate = (lambda x: project_out(x, unit)) if layers is None or index in layers else (lambda x: x)
            post_norms = hasattr(block, "post_feedforward_layernorm")
            hidden = ablate(hidden)
            attention = block.self_attn(hidden_states=block.input_layernorm(hidden),
                                        attention_mask=kwargs.get("attention_mask"),
                                        position_embeddings=kwargs.get("position_embeddings"),
                                        position_ids=kwargs.get("position_ids"))[0]
            if post_norms:
                attention = block.post_attention_layernorm(attention)
            hidden = hidden + ablate(attention)
            pre_mlp = block.pre_feedforward_layernorm if post_norms else block.post_attention_layernorm
            mlp = block.mlp(pre_mlp(hidden))
            if post_norms:
                mlp = block.post_feedforward_layernorm(mlp)
            hidden = hidden + ablate(mlp)
            outputs.append(hidden)
    return outputs


def hooked_block_outputs(chat_model, batch, ablation):
    outputs = []

    def record(_module, _args, out):
        outputs.append(out[0] if isinstance(out, tuple) else out)

    handles = [block.register_forward_hook(record) for block in chat_model.layers]
    try:
        with torch.no_grad(), intervene(chat_model, ablation):
            logits = chat_model.model(**model_inputs(batch), use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()
    return outputs, logits


@pytest.mark.parametrize("layers", [None, [1, 2]])
def test_ablation_equals_manual_forward_that_projects_out_at_the_papers_points(chat_model, layers):
    batch = chat_model.tokenize(PROMPTS)
    direction = torch.randn(chat_model.d_model, generator=torch.Generator().manual_seed(1))
    unit = direction / direction.norm()
    expected = reference_block_outputs(chat_model, batch, unit, layers)
    got, _ = hooked_block_outputs(chat_model, batch, DirectionalAblation(direction, layers=layers))
    real = batch["attention_mask"].bool()
    for index, (want, have) in enumerate(zip(expected, got)):
        torch.testing.assert_close(have[real], want[real], rtol=1e-5, atol=1e-5, msg=f"block {index}")
    if layers is None:  # every residual point is clean
        assert max(float((h[real] @ unit).abs().max()) for h in got) < 1e-4


def test_the_mlp_reads_a_clean_mid_block_residual(llama):
    """The form that edits only block inputs and outputs leaves the direction in the MLP's input."""
    batch = llama.tokenize(PROMPTS)
    direction = torch.randn(llama.d_model, generator=torch.Generator().manual_seed(2))
    unit = direction / direction.norm()
    seen = []
    handles = [block.post_attention_layernorm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
               for block in llama.layers]  # Llama's pre-MLP norm reads the mid-block residual
    try:
        with torch.no_grad():
            llama.model(**model_inputs(batch), use_cache=False)
            clean = [float((x @ unit).abs().max()) for x in seen]
            seen.clear()
            with intervene(llama, DirectionalAblation(direction)):
                llama.model(**model_inputs(batch), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    assert min(clean) > 1e-2
    assert max(float((x @ unit).abs().max()) for x in seen) < 1e-4


def test_one_direction_per_row_equals_separate_runs(chat_model):
    batch = chat_model.tokenize(PROMPTS[:3])
    directions = torch.randn(3, chat_model.d_model, generator=torch.Generator().manual_seed(3))
    _, together = hooked_block_outputs(chat_model, batch, DirectionalAblation(directions))
    for row in range(3):
        _, alone = hooked_block_outputs(chat_model, batch, DirectionalAblation(directions[row]))
        torch.testing.assert_close(together[row], alone[row], rtol=1e-5, atol=1e-5)


def test_hooks_on_every_module_removed_after_an_exception(chat_model):
    def hook_count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in chat_model.model.modules())

    before = hook_count()
    ablation = DirectionalAblation(torch.randn(chat_model.d_model))
    with pytest.raises(RuntimeError, match="boom"), intervene(chat_model, ablation):
        assert hook_count() == before + 3 * chat_model.n_layers
        raise RuntimeError("boom")
    assert hook_count() == before


def test_residual_writers_are_the_modules_added_to_the_stream(llama, gemma2):
    block = llama.layers[0]
    assert residual_writers(block) == (block.self_attn, block.mlp)
    block = gemma2.layers[0]
    assert residual_writers(block) == (block.post_attention_layernorm, block.post_feedforward_layernorm)
    with pytest.raises(TypeError, match="self_attn"):
        residual_writers(torch.nn.Linear(2, 2))


def test_directions_must_match_the_batch(llama):
    batch = llama.tokenize(PROMPTS)
    with pytest.raises(ValueError, match="2 directions for a batch of 4"):
        hooked_block_outputs(llama, batch, DirectionalAblation(torch.randn(2, llama.d_model)))
