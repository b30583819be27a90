"""Attribution graphs over per-layer transcoder features (circuit-tracer conventions)."""
