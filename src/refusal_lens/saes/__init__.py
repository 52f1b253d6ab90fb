"""SAEs through sae_lens: pretrained releases and folders on disk, one per layer."""

from refusal_lens.saes.sae_set import (ModelMismatchWarning, SAELoadError, SAESet, SAESource, check_sae_spec,
                                       load_sae_set, sae_lens_release)

__all__ = ["ModelMismatchWarning", "SAELoadError", "SAESet", "SAESource", "check_sae_spec", "load_sae_set",
           "sae_lens_release"]
