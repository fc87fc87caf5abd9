"""Settings from HERALD_* environment variables, with safe local defaults.

This is the only module that reads the environment. Everything else receives
a ``Settings`` instance (or a value taken from one).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore")

    # Endpoints of the four servers.
    kafka_brokers: str = "127.0.0.1:9092"
    cassandra_hosts: str = "127.0.0.1"
    cassandra_port: int = 9042
    cassandra_keyspace: str = "herald"
    redis_url: str = "redis://127.0.0.1:6379/0"
    postgres_dsn: str = "postgresql://herald:herald@127.0.0.1:5432/herald"

    # The local stack (scripts/stack.py): where it lives and how big it is.
    local_dir: Path = REPO_ROOT / ".local"
    kafka_version: str = "3.9.1"
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    cassandra_version: str = "5.0.6"
    cassandra_storage_port: int = 7000
    cassandra_jmx_port: int = 7199
    cassandra_heap: str = "1g"

    # Kafka topics and the Faust worker.
    topic_partitions: int = Field(default=8, ge=1)
    app_id: str = "herald"
    worker_batch_size: int = Field(default=2000, ge=1)
    worker_batch_seconds: float = Field(default=0.25, gt=0)

    # `make run`: how many worker processes, and the demo audience it loads.
    workers: int = Field(default=2, ge=1)
    demo_users: int = Field(default=100_000, ge=0)

    # The API.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    health_timeout_s: float = 1.5
    api_key_cache_s: float = 5.0

    @property
    def kafka_port(self) -> int:
        return int(self.kafka_brokers.split(",")[0].rsplit(":", 1)[1])

    @property
    def kafka_host(self) -> str:
        return self.kafka_brokers.split(",")[0].rsplit(":", 1)[0]

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379

    @property
    def redis_host(self) -> str:
        return urlsplit(self.redis_url).hostname or "127.0.0.1"

    @property
    def postgres_port(self) -> int:
        return urlsplit(self.postgres_dsn).port or 5432

    @property
    def postgres_host(self) -> str:
        return urlsplit(self.postgres_dsn).hostname or "127.0.0.1"

    @property
    def cassandra_host_list(self) -> list[str]:
        return [h.strip() for h in self.cassandra_hosts.split(",") if h.strip()]

    @property
    def admin_key_file(self) -> Path:
        return self.local_dir / "admin.key"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()
