# kmsbridge container image: every process (`kmsbridge run translator|executor|projector|reconciler|api`),
# the CLI (`kmsbridge reconcile`, `kmsbridge topics create`) and the KMS simulator.
#
#   docker build -t kmsbridge:0.1.0 .
#
# The Helm chart runs it as user 10001 with a read-only root filesystem and an emptyDir at /tmp.
# confluent-kafka's wheel bundles librdkafka, psycopg[binary] bundles libpq: no build tools are needed.
# The base image is pinned by digest (a tag moves); re-resolve it to take base-image security fixes:
#   docker buildx imagetools inspect python:3.11-slim --format '{{json .Manifest.Digest}}'
# The Python packages are pinned by constraints.txt, the same versions `make test` runs.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 kmsbridge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin kmsbridge

WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY schemas ./schemas
COPY provisioning ./provisioning
COPY kafka_edge ./kafka_edge
COPY kms_adapter ./kms_adapter
COPY consumers ./consumers
COPY producers ./producers
COPY reconciler ./reconciler
COPY kmsbridge ./kmsbridge
# Not copied: localdev/ (the local broker, stack and demo) and tests/: the image holds only what runs in production.
RUN pip install -c constraints.txt . && rm -rf /src

# Nothing is written under the working directory in a pod (database and state are external).
WORKDIR /app
USER 10001:10001
EXPOSE 8080 9100
ENTRYPOINT ["kmsbridge"]
CMD ["--help"]
