"""Herald's local stack: Kafka, Cassandra, Redis and PostgreSQL on loopback, no Docker.

    python scripts/stack.py up        # fetch what is missing, start what is down, apply schemas
    python scripts/stack.py down      # stop every process the project recorded (data stays)
    python scripts/stack.py status    # what answers on each port
    python scripts/stack.py stop redis | start redis

Kafka (KRaft, single node) and Cassandra are fetched from Maven Central with
``mvn dependency:copy-dependencies`` from the poms beside this file and cached
under ``.local/<service>/libs``; Redis and PostgreSQL come from Debian's packages
(``make deps``). Everything lives under ``.local/``: binaries, data, logs, pids.
A server of the right kind that already answers on its port is used as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from procs import Proc

from config import Settings, get_settings
from pipeline.probes import (
    ProbeError,
    probe_cassandra,
    probe_kafka,
    probe_postgres,
    probe_redis,
)

STACK_DIR = Path(__file__).resolve().parent / "stack"


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


class Service:
    """A server the project can fetch, start, probe and stop."""

    name = ""
    ready_timeout = 120.0
    stop_signal = signal.SIGTERM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.local_dir / self.name
        self.proc = Proc(settings.local_dir / "run", self.name)

    host: str
    port: int

    def probe(self) -> str:
        raise NotImplementedError

    def answers(self) -> str | None:
        try:
            return self.probe()
        except ProbeError:
            return None

    def fetch(self) -> None:
        """Make the server's binaries available (cached after the first time)."""

    def start(self) -> None:
        raise NotImplementedError

    def after_ready(self) -> None:
        """Work that needs the server up (creating a role, say)."""

    def up(self) -> tuple[str, bool]:
        """Start the server unless it answers already; say what happened and whether we started it."""
        what = self.answers()
        if what:
            owner = "ours" if self.proc.running() else "already running, used as is"
            self.after_ready()
            return f"{self.name}: {what} on {self.host}:{self.port} ({owner})", False
        if self.proc.running():
            log(f"{self.name}: recorded process is alive but not answering; restarting it")
            self.proc.stop()
        self.fetch()
        log(f"{self.name}: starting on {self.host}:{self.port}")
        started = time.monotonic()
        self.start()
        what = self.wait_ready()
        self.after_ready()
        return f"{self.name}: {what} on {self.host}:{self.port} (started in {time.monotonic() - started:.1f}s)", True

    def wait_ready(self) -> str:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            what = self.answers()
            if what:
                return what
            if not self.proc.running():
                raise SystemExit(f"{self.name} exited during start-up; see {self.log_path()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.name} not ready after {self.ready_timeout:.0f}s; see {self.log_path()}")
            time.sleep(0.25)

    def log_path(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def stop(self) -> bool:
        return self.proc.stop(self.stop_signal)

    def maven_fetch(self, pom: str, version_property: str, version: str) -> Path:
        libs = self.home / "libs"
        marker = libs / f".complete-{version}"
        if marker.exists():
            return libs
        if libs.exists():
            shutil.rmtree(libs)
        mvn = shutil.which("mvn")
        if not mvn:
            raise SystemExit("mvn not found: install Maven (apt-get install maven)")
        log(f"{self.name}: fetching {version} from Maven Central")
        started = time.monotonic()
        subprocess.run(
            [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(STACK_DIR / pom), f"-D{version_property}={version}",
             "dependency:copy-dependencies", f"-DoutputDirectory={libs}"],
            check=True,
        )
        marker.write_text("")
        log(f"{self.name}: fetched {len(list(libs.glob('*.jar')))} jars in {time.monotonic() - started:.1f}s")
        return libs


class Kafka(Service):
    name = "kafka"
    ready_timeout = 90.0

    @property
    def host(self) -> str:
        return self.settings.kafka_host

    @property
    def port(self) -> int:
        return self.settings.kafka_port

    def probe(self) -> str:
        return probe_kafka(self.host, self.port)

    def fetch(self) -> None:
        self.maven_fetch("kafka-pom.xml", "kafka.version", self.settings.kafka_version)

    def java_cp(self) -> str:
        return str(self.home / "libs" / "*")

    def start(self) -> None:
        s = self.settings
        data, logs = self.home / "data", self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = self.home / "server.properties"
        props.write_text("\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{self.host}:{s.kafka_controller_port}",
            f"listeners=PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{s.kafka_controller_port}",
            f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            f"num.partitions={s.topic_partitions}",
            "default.replication.factor=1",
            "min.insync.replicas=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "message.max.bytes=8388608",
            "log.retention.hours=168",
            "",
        ]))
        log4j = self.home / "log4j.properties"
        log4j.write_text("\n".join([
            "log4j.rootLogger=INFO, file",
            "log4j.logger.kafka.request.logger=WARN",
            "log4j.logger.state.change.logger=WARN",
            "log4j.appender.file=org.apache.log4j.RollingFileAppender",
            f"log4j.appender.file.File={logs / 'server.log'}",
            "log4j.appender.file.MaxFileSize=20MB",
            "log4j.appender.file.MaxBackupIndex=3",
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout",
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n",
            "",
        ]))
        java = ["java", f"-Dlog4j.configuration=file:{log4j}", "-cp", self.java_cp()]
        if not (data / "meta.properties").exists():
            cluster_id = subprocess.run(
                java + ["kafka.tools.StorageTool", "random-uuid"],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            subprocess.run(
                java + ["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
                check=True, capture_output=True, text=True,
            )
            log(f"kafka: formatted {data} as cluster {cluster_id}")
        heap = s.kafka_heap
        self.proc.spawn(
            ["java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
             "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{log4j}",
             "-cp", self.java_cp(), "kafka.Kafka", str(props)],
            log=self.log_path(),
        )


class Cassandra(Service):
    name = "cassandra"
    ready_timeout = 180.0

    @property
    def host(self) -> str:
        return self.settings.cassandra_host_list[0]

    @property
    def port(self) -> int:
        return self.settings.cassandra_port

    def probe(self) -> str:
        return probe_cassandra(self.host, self.port)

    def fetch(self) -> None:
        self.maven_fetch("cassandra-pom.xml", "cassandra.version", self.settings.cassandra_version)

    def start(self) -> None:
        s = self.settings
        data, logs, conf = self.home / "data", self.home / "logs", self.home / "conf"
        for d in (data, logs, conf):
            d.mkdir(parents=True, exist_ok=True)
        yaml = conf / "cassandra.yaml"
        yaml.write_text(f"""\
cluster_name: herald
num_tokens: 1
initial_token: 0
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
commitlog_sync: periodic
commitlog_sync_period: 10000ms
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{self.host}:{s.cassandra_storage_port}"
listen_address: {self.host}
rpc_address: {self.host}
storage_port: {s.cassandra_storage_port}
native_transport_port: {self.port}
start_native_transport: true
concurrent_reads: 8
concurrent_writes: 16
concurrent_counter_writes: 8
auto_snapshot: false
snapshot_before_compaction: false
data_file_directories: [{data / 'data'}]
commitlog_directory: {data / 'commitlog'}
saved_caches_directory: {data / 'saved_caches'}
hints_directory: {data / 'hints'}
cdc_raw_directory: {data / 'cdc_raw'}
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer
write_request_timeout: 5000ms
read_request_timeout: 10000ms
counter_write_request_timeout: 10000ms
# message_log is written in unlogged single-partition batches of ~100 rows (~20 KiB).
batch_size_warn_threshold: 64KiB
batch_size_fail_threshold: 256KiB
""")
        logback = conf / "logback.xml"
        logback.write_text(f"""\
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{logs / 'system.log'}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{logs / 'system.log'}.%i</fileNamePattern>
      <minIndex>1</minIndex><maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>20MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
""")
        options = [
            line.strip() for line in (STACK_DIR / "jvm17-cassandra.options").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        argv = ["java", f"-Xms{s.cassandra_heap}", f"-Xmx{s.cassandra_heap}"]
        for option in options:
            argv += option.split(" ", 1) if option.startswith("--add-") else [option]
        argv += [
            "-Dcassandra-foreground=yes",
            f"-Dcassandra.config=file://{yaml}",
            f"-Dcassandra.storagedir={data}",
            f"-Dcassandra.logdir={logs}",
            f"-Dlogback.configurationFile={logback}",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            f"-Dcassandra.jmx.local.port={s.cassandra_jmx_port}",
            "-cp", str(self.home / "libs" / "*"),
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        self.proc.spawn(argv, log=self.log_path())


class Redis(Service):
    name = "redis"
    ready_timeout = 30.0

    @property
    def host(self) -> str:
        return self.settings.redis_host

    @property
    def port(self) -> int:
        return self.settings.redis_port

    def probe(self) -> str:
        return probe_redis(self.host, self.port)

    def fetch(self) -> None:
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server not found: run `make deps` (apt-get install redis-server)")

    def start(self) -> None:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.proc.spawn(
            ["redis-server", "--bind", self.host, "--port", str(self.port), "--dir", str(data),
             "--daemonize", "no", "--appendonly", "yes", "--appendfsync", "everysec",
             "--save", "", "--protected-mode", "no", "--logfile", ""],
            log=self.log_path(),
        )


class Postgres(Service):
    name = "postgres"
    ready_timeout = 60.0
    stop_signal = signal.SIGINT  # "fast" shutdown

    @property
    def host(self) -> str:
        return self.settings.postgres_host

    @property
    def port(self) -> int:
        return self.settings.postgres_port

    def probe(self) -> str:
        return probe_postgres(self.host, self.port)

    def bindir(self) -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                       key=lambda p: int(Path(p).parent.parent.name))
        if not found:
            raise SystemExit("PostgreSQL server not found: run `make deps` (apt-get install postgresql)")
        return Path(found[-1]).parent

    def user(self) -> str | None:
        """PostgreSQL refuses to run as root; as root we run it as 'postgres'."""
        return "postgres" if os.geteuid() == 0 else None

    def run_as(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, user=self.user(), group=self.user(),
                              extra_groups=[] if self.user() else None, **kwargs)

    def fetch(self) -> None:
        self.bindir()

    def start(self) -> None:
        data, sockets = self.home / "data", self.home / "run"
        user = self.user()
        for d in (self.home, sockets, self.home / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        if user:
            entry = pwd.getpwnam(user)
            for d in (self.home, sockets):
                os.chown(d, entry.pw_uid, entry.pw_gid)
        if not (data / "PG_VERSION").exists():
            data.mkdir(mode=0o700, exist_ok=True)
            if user:
                os.chown(data, entry.pw_uid, entry.pw_gid)
            self.run_as([str(self.bindir() / "initdb"), "-D", str(data), "-U", "postgres",
                         "--auth-local=trust", "--auth-host=scram-sha-256",
                         "--encoding=UTF8", "--locale=C.UTF-8"],
                        check=True, capture_output=True, text=True)
            log(f"postgres: initialised {data}")
        self.proc.spawn(
            [str(self.bindir() / "postgres"), "-D", str(data), "-p", str(self.port),
             "-c", f"listen_addresses={self.host}", "-c", f"unix_socket_directories={sockets}",
             "-c", "max_connections=200", "-c", "shared_buffers=256MB",
             "-c", "synchronous_commit=off", "-c", "fsync=on", "-c", "wal_level=replica",
             "-c", "max_wal_size=2GB", "-c", "checkpoint_timeout=15min"],
            log=self.log_path(), user=user,
        )

    def after_ready(self) -> None:
        """Make sure the role and database of HERALD_POSTGRES_DSN exist."""
        from urllib.parse import urlsplit

        dsn = urlsplit(self.settings.postgres_dsn)
        role, password, db = dsn.username or "herald", dsn.password or "herald", dsn.path.lstrip("/") or "herald"
        if self._can_login():
            return
        sockets = self.home / "run"
        socket_dir = str(sockets) if (sockets / f".s.PGSQL.{self.port}").exists() else "/var/run/postgresql"
        psql = [str(self.bindir() / "psql"), "-h", socket_dir, "-p", str(self.port), "-U", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q"]
        sql = (
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role} LOGIN PASSWORD '{password}'; END IF; END$$;"
        )
        self.run_as(psql + ["-d", "postgres", "-c", sql], check=True, capture_output=True, text=True)
        exists = self.run_as(psql + ["-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
                             check=True, capture_output=True, text=True).stdout.strip()
        if not exists:
            self.run_as(psql + ["-d", "postgres", "-c", f"CREATE DATABASE {db} OWNER {role}"],
                        check=True, capture_output=True, text=True)
        log(f"postgres: role {role} and database {db} ready")

    def _can_login(self) -> bool:
        import asyncpg

        async def attempt() -> bool:
            try:
                conn = await asyncpg.connect(self.settings.postgres_dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
                return False
            await conn.close()
            return True

        return asyncio.run(attempt())


SERVICES = (Kafka, Cassandra, Redis, Postgres)


def services(settings: Settings, names: list[str] | None = None) -> list[Service]:
    chosen = [cls(settings) for cls in SERVICES]
    if names:
        unknown = set(names) - {s.name for s in chosen}
        if unknown:
            raise SystemExit(f"unknown service(s): {', '.join(sorted(unknown))}")
        chosen = [s for s in chosen if s.name in names]
    return chosen


def up(settings: Settings, names: list[str] | None = None, schemas: bool = True) -> list[str]:
    """Bring the servers up (and the schemas); return the names of those started now."""
    started = time.monotonic()
    chosen = services(settings, names)
    started_now = []
    # The JVMs take the longest, so every service starts at once.
    with ThreadPoolExecutor(len(chosen)) as pool:
        for service, (line, fresh) in zip(chosen, pool.map(lambda s: s.up(), chosen)):
            log(line)
            if fresh:
                started_now.append(service.name)
    if schemas:
        from migrate import migrate_all

        report = asyncio.run(migrate_all(settings))
        for store, outcome in report.items():
            log(f"schema {store}: {outcome or 'up to date'}")
    log(f"stack up in {time.monotonic() - started:.1f}s")
    return started_now


def down(settings: Settings, names: list[str] | None = None) -> None:
    run_dir = settings.local_dir / "run"
    if not names:
        # Herald's own processes (API, workers) first, then the servers they use.
        for pid_file in sorted(run_dir.glob("app-*.pid")):
            if Proc(run_dir, pid_file.stem).stop():
                log(f"stopped {pid_file.stem}")
    for service in reversed(services(settings, names)):
        if service.stop():
            log(f"stopped {service.name}")


def status(settings: Settings) -> int:
    down_count = 0
    for service in services(settings):
        what = service.answers()
        owner = f"pid {service.proc.pid()}" if service.proc.running() else "not started by us"
        if what:
            log(f"{service.name:9} up    {service.host}:{service.port}  {what}  ({owner})")
        else:
            down_count += 1
            log(f"{service.name:9} down  {service.host}:{service.port}")
    run_dir = settings.local_dir / "run"
    for pid_file in sorted(run_dir.glob("app-*.pid")):
        proc = Proc(run_dir, pid_file.stem)
        log(f"{pid_file.stem:9} {'up' if proc.running() else 'gone'}  pid {proc.pid()}")
    return down_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "status", "start", "stop", "clean", "fetch"])
    parser.add_argument("services", nargs="*")
    args = parser.parse_args()
    settings = get_settings()
    if args.command in ("up", "start"):
        up(settings, args.services or None, schemas=args.command == "up")
    elif args.command in ("down", "stop"):
        down(settings, args.services or None)
    elif args.command == "status":
        sys.exit(1 if status(settings) else 0)
    elif args.command == "fetch":
        for service in services(settings, args.services or None):
            service.fetch()
    elif args.command == "clean":
        down(settings)
        shutil.rmtree(settings.local_dir, ignore_errors=True)
        log(f"removed {settings.local_dir}")


if __name__ == "__main__":
    main()
