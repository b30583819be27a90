"""Interpretability and model diffing of reasoning language models (backend).

Never imports streamlit: everything here is usable from a notebook or the CLI.
"""

__version__ = "0.1.0"
