"""SAEs through sae_lens: pretrained releases and folders on disk, one per layer."""

from refusal_lens.saes.sae_set import SAELoadError, SAESet, SAESource, check_sae_spec, known_releases, load_sae_set

__all__ = ["SAELoadError", "SAESet", "SAESource", "known_releases", "check_sae_spec", "load_sae_set"]
