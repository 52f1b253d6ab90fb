"""What the classifier judges share: a causal LM loaded on its own device, batched, left-padded.

The classifier is not a chat model under test, so it is loaded directly with
``AutoModelForCausalLM`` / ``AutoTokenizer``; an already loaded model and tokenizer may be
passed instead (tests build tiny random ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from refusal_lens import distributed
from refusal_lens.batching import BatchKey, length_bucket, map_batches, memory_probe
from refusal_lens.judges.base import Verdict

DEFAULT_BATCH = 8  # texts a batch on the CPU (on a GPU: the largest that fits)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)} or auto")
    return _DTYPES[dtype]


class ClassifierJudge:
    """Base class: lazy loading, batching, the padding-aware forward pass."""

    name = "classifier"
    default_model_id = ""

    def __init__(self, model_id: str | None = None, *, device: str | None = None,
                 dtype: str | torch.dtype | None = None, batch_size: int | None = None,
                 model: Any = None, tokenizer: Any = None, **load_kwargs: Any) -> None:
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer=, or neither")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model_id = model_id or self.default_model_id
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = dtype
        self.batch_size = batch_size
        self.load_kwargs = load_kwargs
        self._model = model
        self._tokenizer = tokenizer
        if tokenizer is not None:
            self._prepare_tokenizer(tokenizer)

    # --- loading -----------------------------------------------------------------------
    def _prepare_tokenizer(self, tokenizer: Any) -> None:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token

    def load(self) -> None:
        """Load the classifier (once)."""
        if self._model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_id, **self.load_kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                self.model_id, dtype=_resolve_dtype(self.dtype, self.device), **self.load_kwargs)
        except OSError as error:
            raise RuntimeError(
                f"Could not load the {self.name} classifier {self.model_id!r} ({error}). It needs "
                f"the Hugging Face hub (it may be gated: accept its license and log in) or a local "
                f"copy (pass its folder as the model id). Without it, use --judge substring."
            ) from error
        self._prepare_tokenizer(tokenizer)
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer

    @property
    def model(self) -> Any:
        self.load()
        return self._model

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    @property
    def model_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    # --- batching ----------------------------------------------------------------------
    def judge_in_batches(self, texts: Sequence[str], judge_chunk: Callable[[list[str]], list[Verdict]],
                         operation: str) -> list[Verdict]:
        """``judge_chunk`` on batches of the classifier's input ``texts`` (``batch_size``; None: the
        largest that fits the GPU, ``DEFAULT_BATCH`` on the CPU), split over the processes of a
        data-parallel run; every process gets every verdict."""

        def local(part: list[str]) -> list[dict]:
            def key() -> BatchKey:
                longest = max((len(ids) for ids in self.tokenizer(part)["input_ids"]), default=1)
                return BatchKey(self.model_id, str(self.model_device), operation, length_bucket(longest))

            chunks = map_batches(part, judge_chunk, batch_size=self.batch_size, default=DEFAULT_BATCH, key=key,
                                 memory=memory_probe(self.model_device))
            return [asdict(v) for chunk in chunks for v in chunk]

        return [Verdict(**v) for v in distributed.map_shards(list(texts), local)]

    def encode(self, texts: Sequence[str], *, add_special_tokens: bool) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), add_special_tokens=add_special_tokens, padding=True,
                               return_tensors="pt")
        mask = batch["attention_mask"]
        return {"input_ids": batch["input_ids"].to(self.model_device),
                "attention_mask": mask.to(self.model_device),
                "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0).to(self.model_device)}

    @torch.no_grad()
    def next_token_logits(self, texts: Sequence[str], *, add_special_tokens: bool) -> torch.Tensor:
        """Logits of the token after each text, ``[batch, vocab]`` (float32, CPU)."""
        inputs = self.encode(texts, add_special_tokens=add_special_tokens)
        out = self.model(**inputs, use_cache=False)
        return out.logits[:, -1].float().cpu()

    def token_ids(self, words: Sequence[str]) -> list[int]:
        """Single tokens that spell one of ``words`` (any case, with or without a leading space)."""
        ids: set[int] = set()
        wanted = {w.lower() for w in words}
        for word in words:
            for form in {word, word.lower(), word.capitalize(), word.upper()}:
                for variant in (form, " " + form):
                    for token in self.tokenizer.encode(variant, add_special_tokens=False):
                        if self.tokenizer.decode([token]).strip().lower() in wanted:
                            ids.add(token)
        return sorted(ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={self.device!r})"
