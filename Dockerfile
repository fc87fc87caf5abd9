# The image docker-compose.yml builds for the migrate, worker and API services.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml ./
COPY config config
COPY pipeline pipeline
COPY agents agents
COPY tables tables
COPY api api
COPY schemas schemas
RUN pip install --no-cache-dir .
