# responder's image, as the chart (charts/responder) runs it: `responder guard` as a non-root user.
#   docker build -t responder:0.1.0 .
FROM python:3.11-slim

# The runbooks stay beside the package: the chart passes --runbook /opt/responder/runbooks/...
WORKDIR /opt/responder
COPY pyproject.toml ./
COPY responder ./responder
COPY runbooks ./runbooks
RUN pip install --no-cache-dir . \
    && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin responder

USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["responder"]
CMD ["guard", "--runbook", "/opt/responder/runbooks/capsule-tenant-crd-deletion.yaml"]
