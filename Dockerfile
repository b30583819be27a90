# syntax=docker/dockerfile:1
# The workbench as a hosted demo (README "Serving the app"):
#
#   docker build -t interp .                                # CPU (the PyTorch CPU wheel)
#   docker build --build-arg TORCH_VARIANT=cuda -t interp:cuda .   # CUDA (PyPI's torch)
#   docker run --rm -p 8501:8501 interp                     # --gpus all for the CUDA one
#
# Build and start are the scripts CI runs outside Docker: deploy/system-packages.sh,
# deploy/build.sh (torch at the pin of requirements.txt, then the requirements) and
# deploy/start.sh (Streamlit with .streamlit/config.toml). The image serves the demo:
# INTERP_CONFIG=deploy/demo.toml turns demo mode on (INTERP_DEMO=0 turns it off).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG PYTHON_VERSION
ARG TORCH_VARIANT=cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/venv \
    PORT=8501 \
    ADDRESS=0.0.0.0 \
    INTERP_CONFIG=deploy/demo.toml \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY deploy/system-packages.sh deploy/
RUN deploy/system-packages.sh && rm -rf /var/lib/apt/lists/*

# the environment first, so code changes do not rebuild it
COPY requirements.txt ./
COPY deploy/build.sh deploy/
RUN PYTHON=python${PYTHON_VERSION} TORCH_VARIANT=${TORCH_VARIANT} deploy/build.sh /opt/venv

COPY . .
RUN /opt/venv/bin/python -m compileall -q app.py pages interp deploy \
    && useradd --create-home --uid 1000 app && chown -R app:app cache
USER app

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["/opt/venv/bin/python", "deploy/healthcheck.py"]
CMD ["deploy/start.sh"]
