"""Transcoder adapters: sparse ReLU branches beside the base model's MLPs that turn the
hybrid (reasoner attention + base MLPs) back into the reasoning model (METHODS.md §1).

Modules: :mod:`.module` (the adapter, feature masks), :mod:`.model` (hybrid backbone,
layer loop, bridged runs, hooks for generation), :mod:`.loss`, :mod:`.data`,
:mod:`.train` (jobs), :mod:`.io` (SAELens format + manifest), :mod:`.evaluate`,
:mod:`.report`, :mod:`.bench`, :mod:`.cli`, :mod:`.plots`.
"""

from .model import AdapterModel, adapter_hooks, build_hybrid
from .module import Adapter, AdapterSet, FeatureMask

__all__ = ["Adapter", "AdapterModel", "AdapterSet", "FeatureMask", "adapter_hooks",
           "build_hybrid"]
