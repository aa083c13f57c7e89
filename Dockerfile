# The bridge as one image for every process: `bridge web` by default, `bridge worker` and the release
# phase (`bridge db upgrade`) by overriding the command (compose.yaml shows all three).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=5000

# A plain `pip install .` gives a complete bridge (migrations and the demo's events ship inside the
# package), so the source is only mounted for the install (BuildKit), never copied into a layer; the
# mount is writable because pip builds in the source tree, and what it writes there is discarded.
RUN --mount=type=bind,target=/src,rw pip install --no-cache-dir /src \
    && useradd --create-home --uid 10001 --user-group bridge

USER 10001
WORKDIR /home/bridge
EXPOSE 5000

# Liveness only (/livez reads nothing): an outage of the database or Redis is not fixed by a restart.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('PORT', '5000'), timeout=4)"]

CMD ["bridge", "web"]
