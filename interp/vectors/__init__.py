"""Reasoning vectors: task arithmetic in weight space, control vectors in activation
space, and lenses (KL / entropy / logit lens) comparing an original with a modified
model. Modules: :mod:`.task`, :mod:`.control`, :mod:`.lens`, :mod:`.sweep`,
:mod:`.plots`, :mod:`.report`, :mod:`.bench`, :mod:`.cli`."""
