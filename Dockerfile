# farmstead server. Its SQLite database lives on the volume /data, so it outlives the container:
#   docker build -t farmstead .
#   docker run -d --name farmstead -v farmstead-data:/data -p 8000:8000 farmstead
# or on PostgreSQL (then /data stays empty):
#   docker run -e FARMSTEAD_DATABASE_URL=postgresql+asyncpg://user@db:5432/farmstead -p 8000:8000 farmstead
# The schema is migrated on start (alembic; a no-op when already at head).
# Pinned: the base image by its exact version tag, every Python package by constraints.txt
# (regenerate it with scripts/lock-constraints).
FROM python:3.11.13-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md alembic.ini constraints.txt ./
COPY alembic ./alembic
COPY src ./src
# PIP_CONSTRAINT (unlike -c alone) also pins the build backend pip installs to build farmstead.
RUN PIP_CONSTRAINT=/app/constraints.txt pip install --no-cache-dir -c constraints.txt . \
 && useradd --create-home --uid 1000 farmstead \
 && mkdir /data && chown farmstead:farmstead /data
USER farmstead
WORKDIR /home/farmstead
ENV FARMSTEAD_HOST=0.0.0.0 \
    FARMSTEAD_PORT=8000 \
    FARMSTEAD_DATABASE_URL=sqlite+aiosqlite:////data/farmstead.db \
    FARMSTEAD_CREDENTIALS_FILE=/data/credentials.json
# declared after /data is made and handed to the farmstead user: a new volume starts as that
VOLUME /data
EXPOSE $FARMSTEAD_PORT
# shell form: $FARMSTEAD_PORT is the port the server was started with (`docker run -e ...`)
HEALTHCHECK --start-period=30s CMD python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "http://127.0.0.1:${FARMSTEAD_PORT}/health"
CMD ["sh", "-c", "farmstead db upgrade && exec farmstead serve"]
