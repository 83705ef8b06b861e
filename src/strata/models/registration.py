"""Register Strata's own architectures with the transformers Auto classes.

After ``register_strata_models()``, ``AutoConfig``/``AutoModelForCausalLM`` know ``ttt`` and ``stratified``, so
``from_pretrained`` on a saved run folder works like any hub model. Strata's loaders call it directly.

``import strata`` must also do it, but registering imports torch and transformers' modeling code (5-8 s on a
2-core machine, against 0.05 s for ``import strata`` and 1.5 s for ``strata datasets``, which needs neither). So
``import strata`` registers at once only where transformers' auto-model module is already imported; otherwise
a meta-path finder waits for it: it counts the transformers and Strata-model modules being executed, and
registers when the import that brought in the auto-model module has finished (count back at 0), as registering
in the middle of it would import half-built modules (``transformers.modeling_layers`` imports the Auto classes
at its top, and Strata's modeling code imports ``modeling_layers``). Python has no post-import callback
(PEP 369 was withdrawn), hence a loader subclass that wraps ``exec_module``.
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_AUTO_MODULE = "transformers.models.auto.modeling_auto"
# Modules whose half-built state would break registration: transformers, and Strata's modules it imports.
_WATCHED = ("transformers", "strata.models.ttt", "strata.models.stratified", "strata.errors")
_registered = False
_executing = 0  # watched module bodies running now (nested imports)


def register_strata_models() -> None:
    """Idempotently register every Strata architecture with the Auto classes."""
    global _registered
    if _registered:
        return
    _registered = True  # before the imports below, which re-enter the finder
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    try:
        from transformers import AutoConfig, AutoModelForCausalLM

        # routers (Strata-side) makes the `domain` source raise a StrataError rather than a bare ValueError
        from strata.models.stratified import StratifiedConfig, StratifiedForCausalLM, routers  # noqa: F401
        from strata.models.ttt import TTTConfig, TTTForCausalLM

        for config_cls, model_cls in ((TTTConfig, TTTForCausalLM), (StratifiedConfig, StratifiedForCausalLM)):
            AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
            AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
    except BaseException:
        _registered = False
        raise


def _watched(name: str) -> bool:
    return any(name == w or name.startswith(w + ".") for w in _WATCHED)


_WATCHING: dict[type, type] = {}


def _watching(loader: importlib.abc.Loader) -> importlib.abc.Loader:
    """A copy of ``loader`` whose class subclasses its own (isinstance, get_source, resources keep working) and
    counts the module body while it runs; at the end of the outermost one, registers if the Auto classes exist."""
    base = type(loader)
    if base not in _WATCHING:

        def exec_module(self, module: ModuleType) -> None:
            global _executing
            _executing += 1
            try:
                base.exec_module(self, module)
            finally:
                _executing -= 1
            if _executing == 0 and not _registered and _AUTO_MODULE in sys.modules:
                register_strata_models()

        _WATCHING[base] = type(f"Watching{base.__name__}", (base,), {"exec_module": exec_module})
    watching = copy.copy(loader)
    watching.__class__ = _WATCHING[base]
    return watching


class _RegistrationFinder(importlib.abc.MetaPathFinder):
    """Finds the ``_WATCHED`` modules exactly as the default path finder does, with a counting loader."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None):
        if not _watched(fullname):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _watching(spec.loader)
        return spec


_FINDER = _RegistrationFinder()


def install_registration_hook() -> None:
    """Register now if transformers' Auto classes are imported, else as soon as an import brings them in."""
    if _registered:
        return
    if _AUTO_MODULE in sys.modules:
        register_strata_models()
    elif _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
