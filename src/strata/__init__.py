"""Strata: train and study language models with the Hugging Face stack, offline-first."""

from strata.models.registration import install_registration_hook

__version__ = "0.1.0"

# `import strata` makes AutoConfig / AutoModelForCausalLM know `ttt` and `stratified`, registering them only
# once the program imports transformers' Auto classes (registering here would cost 5-8 s; see registration.py).
install_registration_hook()
