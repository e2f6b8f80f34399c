"""Resolving the pinned Kafka release and its logging backend from Maven Central into a local cache.

The cache lives outside the repository (default ~/.cache/cv-queue/kafka-<version>/libs) and is reused
as is once complete, so the broker starts offline after the first fetch.
"""

import json
import os
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

from cv_queue.broker.errors import BrokerError
from cv_queue.broker.prerequisites import require_maven

#: The Kafka release the project runs. 4.1.x is the line the project's notes verified; 4.1.2 is its
#: newest bug-fix release on Maven Central.
KAFKA_VERSION = "4.1.2"

_COMPLETE_MARKER = "cv-queue-fetch.json"


def cache_root() -> Path:
    """Where fetched broker jars live: $CVQ_CACHE_DIR, else $XDG_CACHE_HOME/cv-queue, else ~/.cache/cv-queue."""
    explicit = os.environ.get("CVQ_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "cv-queue"


def kafka_home(version: str = KAFKA_VERSION) -> Path:
    """The cache folder for one Kafka version."""
    return cache_root() / f"kafka-{version}"


def cached_libs(version: str = KAFKA_VERSION) -> Path | None:
    """The libs folder if a previous fetch completed, else None."""
    home = kafka_home(version)
    marker = home / _COMPLETE_MARKER
    libs = home / "libs"
    if marker.is_file() and libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    return None


def fetch_kafka(version: str = KAFKA_VERSION, *, quiet: bool = False) -> Path:
    """Return the folder of broker jars, resolving them with Maven first if they are not cached.

    The copy goes into a temporary folder that is renamed into place only when Maven succeeds, so an
    interrupted fetch never leaves a half-filled cache that later looks complete.
    """
    libs = cached_libs(version)
    if libs is not None:
        return libs
    mvn = require_maven()
    home = kafka_home(version)
    home.mkdir(parents=True, exist_ok=True)
    staging = home / f"libs.partial-{os.getpid()}"
    pom = resources.files("cv_queue.broker").joinpath("pom.xml")
    started = time.monotonic()
    with resources.as_file(pom) as pom_path:
        cmd = [
            str(mvn), "-B", "-q", "-f", str(pom_path),
            f"-Dkafka.version={version}", f"-Dlibs.dir={staging}",
            # keep Maven's own build output out of the installed package folder
            f"-Dproject.build.directory={home / 'maven-target'}",
            "dependency:copy-dependencies",
        ]
        if not quiet:
            print(f"fetching Kafka {version} from Maven Central into {home} ...", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BrokerError(
            f"Maven could not resolve kafka_2.13:{version} (exit {proc.returncode}):\n{tail}",
            "check network access to Maven Central (or a mirror in ~/.m2/settings.xml) and retry "
            "`cv-queue broker fetch`.",
        )
    jars = sorted(p.name for p in staging.glob("*.jar"))
    if not any(name.startswith("kafka_2.13-") for name in jars):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar arrived in {staging}.", "retry the fetch.")
    final = home / "libs"
    if final.exists():
        for old in final.iterdir():
            old.unlink()
        final.rmdir()
    staging.rename(final)
    (home / _COMPLETE_MARKER).write_text(
        json.dumps({"kafka_version": version, "jars": jars, "seconds": round(time.monotonic() - started, 1)})
    )
    return final
