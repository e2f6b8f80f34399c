"""server.properties for the nodes of a local KRaft cluster (1 or 3 combined broker+controller nodes)."""

import base64
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cv_queue.broker.security import BrokerSecurity

#: A controller listens this far above its node's client port.
CONTROLLER_PORT_OFFSET = 100


@dataclass(frozen=True)
class NodeLayout:
    """Where one node listens and keeps its data."""

    node_id: int
    client_port: int
    controller_port: int
    data_dir: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.client_port}"


def plan_nodes(nodes: int, base_port: int, data_root: Path) -> list[NodeLayout]:
    """Consecutive client ports from base_port; controller ports CONTROLLER_PORT_OFFSET above them."""
    return [
        NodeLayout(
            node_id=i + 1,
            client_port=base_port + i,
            controller_port=base_port + CONTROLLER_PORT_OFFSET + i,
            data_dir=data_root / f"node-{i + 1}",
        )
        for i in range(nodes)
    ]


def new_cluster_id() -> str:
    """A Kafka cluster id (22-char base64url UUID, what `StorageTool random-uuid` prints), without a JVM."""
    while True:
        # Like Kafka's own Uuid.randomUuid, never an id that starts with "-": the storage tool would read it as a flag.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def render_server_properties(node: NodeLayout, cluster: list[NodeLayout],
                             security: "BrokerSecurity | None" = None) -> str:
    """The node's server.properties: static quorum, loopback only, small thread pools for a 2-core box; with
    `security`, a SASL_SSL client listener and the authorizer (see cv_queue.broker.security)."""
    voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in cluster)
    # Internal topics can only be as replicated as the cluster is big; with the defaults (RF 3, min ISR 2)
    # a single node could never create __transaction_state and init_transactions() would hang.
    rf = min(3, len(cluster))
    min_isr = 1 if rf == 1 else 2
    lines: dict[str, object] = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://127.0.0.1:{node.client_port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.client_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(node.data_dir),
        # Topics are provisioned explicitly; auto-creation would hide a missing retry topic behind a
        # silently created 1-partition one.
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        "default.replication.factor": rf,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": min_isr,
        "offsets.topic.num.partitions": 3,
        "transaction.state.log.num.partitions": 3,
        "group.initial.rebalance.delay.ms": 0,
        "num.network.threads": 2,
        "num.io.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "num.replica.fetchers": 1,
        "background.threads": 2,
        "log.cleaner.threads": 1,
        # Transaction markers and offset commits are the hot path of every test; keep the
        # coordinator's abort timer short so a killed worker's open transaction does not linger.
        "transaction.abort.timed.out.transaction.cleanup.interval.ms": 5000,
    }
    if security is not None:
        lines.update(security.server_properties(node.client_port, node.controller_port))
    return "".join(f"{key}={value}\n" for key, value in lines.items())
