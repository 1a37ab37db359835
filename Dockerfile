# farmstead server on port 8000. Point it at PostgreSQL with FARMSTEAD_DATABASE_URL, e.g.
#   docker run -e FARMSTEAD_DATABASE_URL=postgresql+asyncpg://user@db:5432/farmstead -p 8000:8000 farmstead
# The schema is migrated on start (alembic; a no-op when already at head).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY src ./src
RUN pip install --no-cache-dir . && useradd --create-home farmstead
USER farmstead
WORKDIR /home/farmstead
ENV FARMSTEAD_HOST=0.0.0.0 FARMSTEAD_PORT=8000
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["sh", "-c", "farmstead db upgrade && exec farmstead serve"]
