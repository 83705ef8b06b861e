"""Register Strata's own architectures with the transformers Auto classes.

After ``register_strata_models()``, ``AutoConfig``/``AutoModelForCausalLM`` know ``ttt`` and
``stratified``, so ``from_pretrained`` on a saved run folder works like any hub model.

``import strata`` calls ``install_registration_hook()``: registering needs torch and transformers (about 10 s
to import on a 2-core machine), far too slow for ``import strata`` or ``strata --help``, so the hook waits until
the program itself imports transformers' auto-model module, and registers as soon as no transformers module is
half-initialised (``transformers.modeling_layers`` imports the Auto classes at its top, for instance, and
Strata's modeling code imports ``modeling_layers``), nor the Strata model packages themselves: it watches those
imports (a meta-path finder that resolves them as the default one does) and registers when the last one in
progress has finished.
Strata's own loading code calls ``register_strata_models()`` directly and does not rely on the hook.
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_registered = False
_registering = False  # registration imports modules, which re-enters the hook's find_spec
_AUTO_MODULE = "transformers.models.auto.modeling_auto"
_auto_ready = False  # the auto-model module has finished executing
# Packages whose half-initialised state would break registration: transformers (Strata's modeling code imports
# it) and the Strata modules `register_strata_models` imports by name.
_WATCHED = ("transformers", "strata.models.ttt", "strata.models.stratified", "strata.errors")


def _watched(name: str) -> bool:
    return any(name == w or name.startswith(w + ".") for w in _WATCHED)


def register_strata_models() -> None:
    """Idempotently register every Strata architecture with the Auto classes."""
    global _registered, _registering
    if _registered or _registering:
        return
    _registering = True
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        # routers (Strata-side) makes the `domain` source raise a StrataError rather than a bare ValueError
        from strata.models.stratified import StratifiedConfig, StratifiedForCausalLM, routers  # noqa: F401
        from strata.models.ttt import TTTConfig, TTTForCausalLM

        for config_cls, model_cls in ((TTTConfig, TTTForCausalLM), (StratifiedConfig, StratifiedForCausalLM)):
            AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
            AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
        _registered = True
    finally:
        _registering = False
    _remove_hook()


def _mid_import(finished: str = "") -> bool:
    """True while some watched module (other than ``finished``) is still executing its body."""
    for name, module in list(sys.modules.items()):
        if name == finished or not _watched(name):
            continue
        spec = getattr(module, "__spec__", None)
        if spec is not None and getattr(spec, "_initializing", False):
            return True
    return False


def _after_exec(name: str) -> None:
    """Called when the body of watched module `name` has run: register once nothing watched is half-built."""
    global _auto_ready
    if name == _AUTO_MODULE:
        _auto_ready = True
    if _auto_ready and not (_registered or _registering) and not _mid_import(finished=name):
        register_strata_models()


_WRAPPED: dict[type, type] = {}


def _watching(loader: importlib.abc.Loader) -> importlib.abc.Loader:
    """A copy of `loader` whose class is a subclass of its own (isinstance, get_source, resources keep working)
    that calls `_after_exec(name)` after the module body has run."""
    base = type(loader)
    if base not in _WRAPPED:

        def exec_module(self, module: ModuleType) -> None:
            base.exec_module(self, module)
            _after_exec(module.__name__)

        _WRAPPED[base] = type(f"Watching{base.__name__}", (base,), {"exec_module": exec_module})
    watched = copy.copy(loader)
    watched.__class__ = _WRAPPED[base]
    return watched


class _RegistrationHook(importlib.abc.MetaPathFinder):
    """Meta-path finder that watches the `_WATCHED` imports (it resolves them exactly as the default finder)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None):
        if _registered or not _watched(fullname):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _watching(spec.loader)
        return spec


_HOOK = _RegistrationHook()


def _remove_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)


def install_registration_hook() -> None:
    """Register the Strata architectures as soon as the program uses transformers' Auto classes (see above)."""
    global _auto_ready
    if _registered:
        return
    if _AUTO_MODULE in sys.modules and not _mid_import():
        _auto_ready = True
        register_strata_models()
        return
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)
