"""Feature explorer: activation collection, feature cards, the feature map, ground truth.

Modules: :mod:`~interp.features.corpus` (sequences with regions and labels),
:mod:`~interp.features.source` (adapter features or SAELens transcoders behind one
interface), :mod:`~interp.features.collect` (the streaming, resumable pass),
:mod:`~interp.features.scores` (AUROC, hesitation score, logit lens, ablation effect),
:mod:`~interp.features.pipeline` (finalise + save; the ``features.collect`` job),
:mod:`~interp.features.table` (reading a saved collection), :mod:`~interp.features.card`
(card data, HTML), :mod:`~interp.features.featmap` (UMAP map), :mod:`~interp.features.labels`
(editable labels), :mod:`~interp.features.plots`, :mod:`~interp.features.report`,
:mod:`~interp.features.bench`.
"""
