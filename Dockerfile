# One image for the API and the workers (CUDA comes from the host driver through the NVIDIA runtime).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm dataset-fashion-mnist \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 obow && mkdir /artifacts && chown obow /artifacts
WORKDIR /app

# PyTorch wheels with CUDA; pinned like the rest of the project.
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml setup.py README.md alembic.ini ./
COPY obow obow
COPY server server
COPY worker worker
COPY migrations migrations
COPY templates templates
COPY scripts/setup-extra.sh scripts/setup-extra.sh
RUN pip install -e ".[server,worker]" \
    && SKIP_CHROMIUM=1 bash scripts/setup-extra.sh \
    && apt-get purge -y npm && apt-get autoremove -y

USER obow
ENV OBOW_LAB_HOST=0.0.0.0 ARTIFACT_ROOT=/artifacts OBOW_LAB_HOME=/home/obow/lab
EXPOSE 8000
CMD ["obow", "lab", "serve"]
