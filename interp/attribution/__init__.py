"""Attribution graphs over adapter or transcoder features (circuit-tracer conventions).

``record`` a prompt's forward pass, ``attribute`` it to targets, ``prune`` the graph,
export it as circuit-tracer / Neuronpedia JSON. See each module's docstring.
"""
