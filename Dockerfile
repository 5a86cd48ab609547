# llm-proxy in a container: the same `llm-proxy` command as on a host, as a non-root user, writing
# its database, audit log and event log in the /data volume (docs/deploy-ec2.md, "Docker").
#   install -m 0600 deploy/docker.env.example docker.env   # then set MANAGEMENT_TOKEN in it
#   docker build -t llm-proxy .
#   docker run -d --name llm-proxy -p 127.0.0.1:8080:8080 -v llm-proxy-data:/data \
#     --env-file docker.env --stop-timeout 40 llm-proxy
# --stop-timeout: SIGTERM drains in-flight requests for up to SHUTDOWN_TIMEOUT (30s), longer
# than Docker's default 10s before SIGKILL.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY llmproxy ./llmproxy
RUN python -m venv /opt/llm-proxy/venv \
    && /opt/llm-proxy/venv/bin/pip install .

FROM python:3.11-slim
RUN groupadd --system --gid 10001 llm-proxy \
    && useradd --system --uid 10001 --gid llm-proxy --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin llm-proxy \
    && mkdir /data \
    && chown llm-proxy:llm-proxy /data
COPY --from=build /opt/llm-proxy/venv /opt/llm-proxy/venv
ENV PATH=/opt/llm-proxy/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LISTEN_ADDR=0.0.0.0:8080 \
    DATABASE_URL=sqlite:////data/llm-proxy.db \
    AUDIT_LOG_FILE=/data/audit.log \
    FILE_EVENT_LOG=/data/events.jsonl
WORKDIR /data
VOLUME /data
USER llm-proxy
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=3)"
# exec form: llm-proxy is PID 1 and receives SIGTERM itself (docker stop)
ENTRYPOINT ["llm-proxy"]
CMD ["server", "--listen", "0.0.0.0:8080"]
