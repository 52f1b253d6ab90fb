"""The analyses of [Y25] (METHOD.md §5) on pure inputs: a chat model, its SAEs, feature keys, prompts.

- ``pinned.py``: forward passes and generation with features edited and others pinned clean;
"""
