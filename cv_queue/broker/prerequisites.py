"""Finding the Java and Maven this machine provides, with actionable errors when they are missing."""

import os
import re
import shutil
import subprocess
from pathlib import Path

from cv_queue.broker.errors import BrokerError

MIN_JAVA_MAJOR = 17  # Kafka 4.x brokers require Java 17+


def find_java() -> Path:
    """The `java` binary: $JAVA_HOME/bin/java first, then PATH."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("java")
    if not found:
        raise BrokerError(
            "Java was not found (no $JAVA_HOME/bin/java and no `java` on PATH).",
            "install OpenJDK 17 or newer (Debian: `apt-get install openjdk-17-jre-headless`) "
            "or set JAVA_HOME to an existing JDK.",
        )
    return Path(found)


def java_major_version(java: Path) -> int:
    """The major version `java -version` reports (17 for "17.0.15", 8 for "1.8.0_392")."""
    try:
        proc = subprocess.run([str(java), "-version"], capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise BrokerError(f"Could not run {java}: {exc}", "check that JAVA_HOME points at a working JDK.") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if not match:
        raise BrokerError(f"Could not read the Java version from `{java} -version`.", "install OpenJDK 17+.")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # the pre-9 "1.8" scheme
        major = int(match.group(2))
    return major


def require_java() -> Path:
    """A Java new enough for the broker, or a BrokerError saying what to install."""
    java = find_java()
    major = java_major_version(java)
    if major < MIN_JAVA_MAJOR:
        raise BrokerError(
            f"{java} is Java {major}; the Kafka 4.x broker needs Java {MIN_JAVA_MAJOR} or newer.",
            "install OpenJDK 17+ and point JAVA_HOME at it.",
        )
    return java


def require_maven() -> Path:
    """The `mvn` binary, needed only when the broker's jars are not cached yet."""
    found = shutil.which("mvn")
    if not found:
        raise BrokerError(
            "Maven (`mvn`) was not found on PATH, and the Kafka jars are not cached yet.",
            "install Maven 3.8+ (Debian: `apt-get install maven`), or copy a filled cache into "
            "$CVQ_CACHE_DIR from a machine that has one.",
        )
    return Path(found)
