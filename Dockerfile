# Evaluation and training image for mclip_hbt: CPU by default, a CUDA variant by one argument.
#   docker build -t mclip-hbt .                                                     # CPU torch (download.pytorch.org/whl/cpu)
#   docker build -t mclip-hbt:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker build -t mclip-hbt --build-arg TORCH_INDEX=wheels .                      # torch/torchvision from docker/wheels/
#   docker run --rm --user "$(id -u):$(id -g)" -v /data:/data mclip-hbt eval.xtd --lang all --model /data/model \
#       --images /data/coco --captions /data/xtd10 --out /data/xtd10.json
# docker/smoke.sh builds it and runs the README's commands offline.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# The torch/torchvision releases the project is tested with (the Makefile's TORCH_PINS).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Where they come from: a PyTorch wheel index (CPU by default), "pypi" (PyPI's build: CUDA, several GB),
# "wheels" (the wheel files placed in docker/wheels/ of the build context), or "none" (the base image has them).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    MCLIP_HBT_CACHE=/cache/mclip_hbt \
    HF_HOME=/cache/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/mclip_hbt
COPY docker/wheels /tmp/wheels
RUN pins="torch==${TORCH_VERSION} torchvision==${TORCHVISION_VERSION}"; \
    case "$TORCH_INDEX" in \
      none) ;; \
      pypi) pip install $pins ;; \
      wheels) pip install --find-links /tmp/wheels $pins ;; \
      *) pip install --index-url "$TORCH_INDEX" $pins ;; \
    esac \
 && rm -rf /tmp/wheels \
 && pip freeze | grep -E '^(torch|torchvision)==' > /opt/torch-constraints.txt

COPY pyproject.toml README.md train.py ./
COPY mclip_hbt ./mclip_hbt
COPY data_recipes ./data_recipes
COPY eval ./eval
COPY configs ./configs
COPY docker/entrypoint.sh /usr/local/bin/mclip-hbt-entrypoint

# The bundled encoder is converted now, so the image runs offline; the cache stays writable by any user, since
# `docker run --user UID:GID` (files in a mounted folder owned by the caller, not root) runs as one with no home.
RUN pip install --constraint /opt/torch-constraints.txt '.[offline]' \
 && python -m mclip_hbt.bundled \
 && chmod -R a+rwX /cache \
 && chmod +x /usr/local/bin/mclip-hbt-entrypoint
ENV HOME=/tmp

ENTRYPOINT ["mclip-hbt-entrypoint"]
CMD []
