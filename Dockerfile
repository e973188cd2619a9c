# Evaluation image for mclip_hbt (CPU by default).
#   docker build -t mclip-hbt .
#   docker build -t mclip-hbt:cuda --build-arg BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime --build-arg TORCH_INDEX=none .
#   docker run --rm -v /data:/data mclip-hbt eval.xtd --lang all --model /data/model --images /data/coco
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# CPU wheels unless the base image already brings a CUDA build of torch (then pass TORCH_INDEX=none).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    MCLIP_HBT_CACHE=/cache/mclip_hbt \
    HF_HOME=/cache/huggingface

WORKDIR /opt/mclip_hbt
COPY pyproject.toml README.md train.py ./
COPY mclip_hbt ./mclip_hbt
COPY data_recipes ./data_recipes
COPY eval ./eval
COPY configs ./configs
COPY docker/entrypoint.sh /usr/local/bin/mclip-hbt-entrypoint

RUN if [ "$TORCH_INDEX" != "none" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX" torch torchvision; fi \
 && pip install --no-cache-dir '.[offline]' \
 && python -m mclip_hbt.bundled \
 && chmod +x /usr/local/bin/mclip-hbt-entrypoint

ENTRYPOINT ["mclip-hbt-entrypoint"]
CMD []
