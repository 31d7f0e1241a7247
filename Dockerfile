# pldns: one image for every role (the syncer, the node-local DaemonSet, the CoreDNS forward
# target). Stage 1 builds wheels of pldns and all its dependencies and installs them from those
# wheels alone into a virtualenv without pip; stage 2 copies only that venv and the configs and
# runs as a numeric non-root user. No compiler, pip cache, wheel or test file reaches stage 2.
# The data plane is compiled with mypyc (COMPILE=1, the default; COMPILE=0 gives the pure
# Python build): `pldns version` in the image says which (README, "Compiled data plane").
#   docker build -t pldns:0.1.0 .                  (the official python:3.11-slim base)
#   scripts/build-image.sh                         (no Docker: buildah, on a Debian 12 base
#                                                   built here when python:3.11-slim can't be pulled)
# Any base with `python3` (3.11+, with the venv module) and apt works: the official image has
# it in /usr/local/bin, Debian's python3 + python3-venv in /usr/bin; only `python3 -m venv`
# and /opt/pldns/bin are used, so both work. Details and the port choices: deploy/README.md.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG COMPILE=1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# binutils (for strip) in this stage only: the dependencies' C extensions come with debug
# info, about 20 MB that the runtime never reads. With COMPILE=1 also a C compiler, and the
# Python headers where the base lacks them (Debian's python3 without python3-dev).
# hadolint ignore=DL3008,SC2046
RUN apt-get update \
 && apt-get install -y --no-install-recommends binutils \
      $([ "$COMPILE" = 1 ] && echo gcc libc6-dev) \
      $([ "$COMPILE" = 1 ] && python3 -c 'import os, sys, sysconfig; sys.exit(os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' && echo python3-dev) \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY pldns ./pldns
# --use-pep517: the cloud SDK has setup.py-only sdists; this builds them the same way with
# the pip of either base (no `wheel` package needed in the venv). With COMPILE=1 pldns's own
# wheel is then built again, compiled (mypy brings mypyc; the build venv only), in its place.
RUN /opt/build/bin/pip wheel --no-cache-dir --use-pep517 --wheel-dir /wheels . \
 && if [ "$COMPILE" = 1 ]; then \
      /opt/build/bin/pip install --no-cache-dir mypy setuptools wheel \
      && rm /wheels/pldns-*.whl \
      && PLDNS_COMPILE=1 /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
           --wheel-dir /wheels . ; \
    fi
# The runtime venv has no pip or setuptools: the build venv's pip installs into it (--python).
# Test suites that some dependencies ship inside their packages are dropped.
RUN python3 -m venv --without-pip /opt/pldns \
 && /opt/build/bin/pip --python /opt/pldns/bin/python install --no-cache-dir --no-index \
      --find-links=/wheels /wheels/*.whl \
 && find /opt/pldns/lib -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
      -exec rm -rf {} + \
 && find /opt/pldns -name '*.so' -exec strip --strip-debug {} + \
 && /opt/pldns/bin/pldns version \
 && if [ "$COMPILE" = 1 ]; then \
      /opt/pldns/bin/python -I -c 'import sys, pldns.dns; sys.exit(pldns.dns.load() != "compiled")'; \
    fi

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pldns" \
      org.opencontainers.image.description="DNS forwarding proxy answering Alibaba Cloud API names with PrivateLink endpoint IPs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}" \
      org.opencontainers.image.documentation="deploy/README.md"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH="/opt/pldns/bin:${PATH}"
# iproute2: the node-local DaemonSet's init container puts the link-local listen address on
# the node with `ip`. Security updates come with the base image, so versions are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 65532 pldns \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin pldns \
 && mkdir -p /etc/pldns/config /etc/pldns/snapshot
COPY --from=build /opt/pldns /opt/pldns
COPY deploy/container/pldns.yaml /etc/pldns/pldns.yaml
# The demo (static answers, 127.0.0.1:1053): docker run --network host IMAGE serve --config /etc/pldns/demo.yaml
COPY config/pldns.yaml /etc/pldns/demo.yaml
USER 65532:65532
# The image's own config listens on 1053 (no privilege needed); the Kubernetes Service maps
# 53 to it. The node-local DaemonSet binds 53 on the node itself (see deploy/README.md).
EXPOSE 1053/udp 1053/tcp 9153/tcp
ENTRYPOINT ["pldns"]
CMD ["serve", "--config", "/etc/pldns/pldns.yaml"]
