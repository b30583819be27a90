"""Reasoning length: thinking-length directions, steering sweeps, short-thinking heads,
the ThinkEdit weight edit and SEAL-style conditional steering (METHODS.md §3).

Modules (one idea each):

* :mod:`.data` - think markers, batched generation with thinking lengths, long/short
  split, teacher-forced per-example activations over the *thinking positions*;
* :mod:`.directions` - ``dir_l = mean_long - mean_short`` per layer and site, held-out
  separability, cosine across layers; saved as artifacts;
* :mod:`.steer` - additive steering hooks, the α grid, the batched α sweep;
* :mod:`.heads` - per-head write onto the unit short direction (``[layers, heads]``);
* :mod:`.edit` - ``W_O[h] <- W_O[h] - (W_O[h] v) v^T`` on the TransformerLens model and
  the same edit on the HF ``o_proj`` weight (exported checkpoint);
* :mod:`.seal` - thought-type rules, the reflection/transition vs execution vector,
  separator-conditional steering inside an open think block;
* :mod:`.stats` - AUROC, Wilson / bootstrap intervals, Spearman;
* :mod:`.pipeline` - the end-to-end demo build (artifacts read by the report and page);
* :mod:`.report`, :mod:`.bench`, :mod:`.sweep`, :mod:`.cli`, :mod:`.plots`.

Never imports streamlit.
"""
