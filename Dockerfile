# pldns: one image for every role (the syncer, the node-local DaemonSet, the CoreDNS forward
# target). Stage 1 builds wheels of pldns and all its dependencies; stage 2 installs them
# from those wheels only (no index, no cache) and runs as a numeric non-root user.
# Build (BuildKit, the default since Docker 23, for RUN --mount): docker build -t pldns:0.1.0 .
# Details and the port choices: deploy/README.md.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pldns ./pldns
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="pldns" \
      org.opencontainers.image.description="DNS forwarding proxy answering Alibaba Cloud API names with PrivateLink endpoint IPs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim" \
      org.opencontainers.image.documentation="deploy/README.md"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# iproute2: the node-local DaemonSet's init container puts the link-local listen address on
# the node with `ip`. Security updates come with the base image, so versions are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
# The wheels are bind-mounted from stage 1, so no layer of this image holds them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
 && groupadd --system --gid 65532 pldns \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin pldns \
 && mkdir -p /etc/pldns/config /etc/pldns/snapshot \
 && pldns version
COPY deploy/container/pldns.yaml /etc/pldns/pldns.yaml
USER 65532:65532
# The image's own config listens on 1053 (no privilege needed); the Kubernetes Service maps
# 53 to it. The node-local DaemonSet binds 53 on the node itself (see deploy/README.md).
EXPOSE 1053/udp 1053/tcp 9153/tcp
ENTRYPOINT ["pldns"]
CMD ["serve", "--config", "/etc/pldns/pldns.yaml"]
