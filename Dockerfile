FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY worker ./worker
COPY tasks ./tasks
COPY api ./api
RUN pip install --no-cache-dir . && useradd --create-home outbox
USER outbox
ENV OUTBOX_DATA_DIR=/home/outbox/.outbox
CMD ["outbox", "worker"]
