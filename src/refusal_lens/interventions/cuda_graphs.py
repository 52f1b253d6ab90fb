"""Replaying a slice's feature edit from a CUDA graph, for the small inputs of decode steps.

A decode step calls the edit at every layer for a handful of tokens, so its cost is the
host's (kernel launches), not the GPU's; a graph replays the same kernels in one launch.
"""

from __future__ import annotations

import warnings

import torch

from refusal_lens.interventions.feature_op import FeatureOp
from refusal_lens.saes.slices import SparseSAESlice

_UNSEEN = object()


class GraphedEdit:
    """One slice's edit for one input shape, captured in a CUDA graph.

    A call copies the input into the graph's buffer, replays the graph (the same kernels
    ``SparseSAESlice.edit`` launches, so the same numbers) and returns a copy of its output:
    three host calls instead of six, and the next replay may overwrite the graph's buffers,
    so nothing returned aliases them.
    """

    def __init__(self, sparse: SparseSAESlice, op: FeatureOp, x: torch.Tensor, mask: torch.Tensor | None,
                 value: float | torch.Tensor | None = None):
        self.input = x.clone()
        self.mask = mask  # read by the graph: kept alive with it
        self.value = op.value if value is None else value  # likewise
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            sparse.edit(self.input, op.kind, self.value, mask)  # warm-up on this stream (cuBLAS handle, workspace)
            self.graph = torch.cuda.CUDAGraph()
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.output = sparse.edit(self.input, op.kind, self.value, mask)
            finally:
                self.graph.capture_end()
        current.wait_stream(side)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.input.copy_(x)
        self.graph.replay()
        return self.output.clone()


def graphed_edit(graphs: dict, layer: int, sparse: SparseSAESlice, op: FeatureOp, x: torch.Tensor,
                 mask: torch.Tensor | None, max_count: int, value: float | torch.Tensor | None = None) -> torch.Tensor:
    """``sparse.edit``, replayed from a CUDA graph once ``layer`` has seen this input shape
    twice (a decode step: same shape at every step). The first sighting runs eagerly.

    ``graphs`` is the caller's: key → None (seen once), False (capture failed: eager) or
    the ``GraphedEdit``; past ``max_count`` keys (many shapes: not a decode loop) nothing
    more is captured. Only without autograd (a graph's output has no history).
    """
    value = op.value if value is None else value  # a tensor of per-feature values (``op.per_feature``)
    if torch.cuda.is_current_stream_capturing():  # inside someone else's capture
        return sparse.edit(x, op.kind, value, mask)
    key = (layer, x.shape, x.dtype, x.device, mask, op, torch.is_inference_mode_enabled())
    graphed = graphs.get(key, _UNSEEN)
    if graphed is _UNSEEN:
        graphs[key] = None
        return sparse.edit(x, op.kind, value, mask)
    if graphed is None:
        if len(graphs) > max_count:
            return sparse.edit(x, op.kind, value, mask)
        try:
            graphed = graphs[key] = GraphedEdit(sparse, op, x, mask, value)
        except RuntimeError as error:  # stay eager for this shape
            graphs[key] = False
            warnings.warn(f"CUDA graph capture of the feature edit failed ({error}); running it eagerly.",
                          RuntimeWarning, stacklevel=2)
    if graphed is False:
        return sparse.edit(x, op.kind, value, mask)
    return graphed(x)
